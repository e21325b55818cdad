/// Everything that can be wrong with bytes received from a peer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("unsupported FastCGI version {0} (only 1 exists)")]
    BadVersion(u8),
    #[error("request {request_id}: PARAMS exceed the limit of {limit} bytes")]
    ParamsTooLarge { request_id: u16, limit: usize },
    #[error("malformed: {0}")]
    Malformed(&'static str),
}
