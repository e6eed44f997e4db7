//! A command's failure and the exit code it maps to (0 ok; 1 operational; 2 usage/config).

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What went wrong and what to do.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = if error.downcast_ref::<crate::config::ConfigError>().is_some() { 2 } else { 1 };
        Failure { code, error }
    }
}

/// A usage error (exit 2).
pub fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure { code: 2, error: anyhow::anyhow!("{msg}") }
}

/// Prints a failure and returns its exit code.
pub fn report(f: Failure) -> u8 {
    eprintln!("tidemark: error: {:#}", f.error);
    f.code
}
