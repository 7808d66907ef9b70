//! What can stop the harness, each naming the run or file it concerns.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("could not start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Run { what: String, detail: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}
