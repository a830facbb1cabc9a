//! Bearer-token files, for `serve --token-file` and the clients' `--token-file`: the
//! token is the file's text without the surrounding whitespace, and it may not be
//! empty (an empty file would mean "any empty token", or no token at all).

use std::path::Path;

use crate::exit::{Failure, USAGE};

/// The token in the file at `path`, which `flag` named (for the message); an unreadable
/// or empty file is a usage error.
pub(crate) fn read(path: &Path, flag: &str) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            USAGE,
            format!("{flag}: cannot read the token file {}: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::new(
            USAGE,
            format!(
                "{flag}: the token file {} is empty (or only whitespace); put the bearer \
                 token in it",
                path.display()
            ),
        ));
    }
    Ok(token.to_string())
}
