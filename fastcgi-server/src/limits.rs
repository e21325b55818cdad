/// Bounds on what a peer may make us hold in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of one request's name-value pairs (FastCGI PARAMS, SCGI header netstring).
    pub max_params_bytes: usize,
    /// Longest single name.
    pub max_name_len: usize,
    /// Longest single value.
    pub max_value_len: usize,
    /// Records in one request's PARAMS stream.
    pub max_params_records: usize,
    /// Requests open at the same time on one connection.
    pub max_concurrent_requests: usize,
    /// PARAMS bytes of all requests on one connection still receiving them: bounds a
    /// multiplexing peer below `max_concurrent_requests × max_params_bytes`.
    pub max_params_bytes_per_connection: usize,
    /// CGI response header block (see [`crate::cgi`]).
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params_bytes: 1 << 20,
            max_name_len: 64 << 10,
            max_value_len: 1 << 20,
            max_params_records: 4096,
            max_concurrent_requests: 1024,
            max_params_bytes_per_connection: 4 << 20,
            max_header_block: 64 << 10,
        }
    }
}
