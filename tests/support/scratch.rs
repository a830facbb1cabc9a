//! Files and directories a test writes in the temporary directory, named for this test
//! run and removed when the test is done with them (kept if it panics, to be looked at).

use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::support::pg::run_id;

/// A path in the temporary directory, `leases-{what}-{run id}-{name}`, removed when
/// dropped unless the thread is panicking.
pub struct Scratch {
    path: PathBuf,
    dir: bool,
}

impl Scratch {
    fn path(what: &str, name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("leases-{what}-{}-{name}", run_id()))
    }

    /// A file holding `contents`.
    pub fn file(what: &str, name: &str, contents: &str) -> Scratch {
        let path = Scratch::path(what, name);
        std::fs::write(&path, contents).expect("write a temporary file");
        Scratch { path, dir: false }
    }

    /// A fresh, empty directory.
    pub fn dir(what: &str, name: &str) -> Scratch {
        let path = Scratch::path(what, name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("make a temporary directory");
        Scratch { path, dir: true }
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let _ = if self.dir {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}
