//! `fcgibridge request`: a one-shot FastCGI/SCGI client for newcomers and health checks.
use std::process::ExitCode;

pub struct Args {
    pub address: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<String>,
    pub data: Option<String>,
    pub scgi: bool,
}

pub fn main(args: Args) -> ExitCode {
    let _ = (args.address, args.path, args.method, args.headers, args.data, args.scgi);
    todo!()
}
