//! The molt binary that runs the build, installed into the app (Heroku) or a layer (CNB).
//!
//! The `bin/*` scripts have already found or obtained it (packaged, cached, downloaded and
//! verified, or built) and run it, so the binary to install is the one running now.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::messages::{self, Message};

/// Mode of an installed binary: everyone may run it, only its owner may change it.
const EXECUTABLE: u32 = 0o755;

/// The path of the running binary.
pub(crate) fn current() -> Result<PathBuf, Message> {
    std::env::current_exe().map_err(|error| messages::cannot_find_binary(&error))
}

/// Copies the running binary to `dest`, creating its directory, with mode 0755. The copy
/// goes to a temporary name beside `dest` and is renamed over it, so a build that stops
/// half-way never leaves a truncated binary at `dest`, and installing the binary over
/// itself (a build run by the molt an earlier build installed) is harmless: the rename
/// replaces the directory entry while the running file stays intact.
pub(crate) fn install(dest: &Path) -> Result<(), Message> {
    let source = current()?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|error| messages::cannot_write(dir, &error))?;
    let temporary = dir.join(".molt.partial");
    let copy = || -> io::Result<()> {
        fs::copy(&source, &temporary)?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(EXECUTABLE))?;
        fs::rename(&temporary, dest)
    };
    copy().map_err(|error| {
        let _ = fs::remove_file(&temporary);
        messages::cannot_write(dest, &error)
    })
}

/// The sha256 of a file, in lowercase hex, for the layer's metadata and SBOM.
pub(crate) fn sha256_hex(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_text() {
        let path = std::env::temp_dir().join(format!("molt-sha256-{}", std::process::id()));
        fs::write(&path, b"abc").unwrap();
        let digest = sha256_hex(&path).unwrap();
        fs::remove_file(&path).unwrap();
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
