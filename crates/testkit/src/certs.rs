//! Test certificates for TLS between processes (made by `certs/make.sh`, which shows how to
//! make them, and checked in so tests need no `openssl`). PEM bytes, and files to hand to a
//! command line.
//!
//! - [`CA`]: the test cluster's certificate authority.
//! - [`NODE_CERT`], [`NODE_KEY`]: a process of that cluster, for `127.0.0.1` and `localhost`,
//!   as server and as client.
//! - [`ROGUE_CA`], [`ROGUE_CERT`], [`ROGUE_KEY`]: another authority, and a process it signed
//!   for the same names: what a server of the test cluster must refuse.
//!
//! The keys are test keys, published with the source: never use them for anything else.

use std::io;
use std::path::{Path, PathBuf};

/// The test cluster's certificate authority.
pub const CA: &[u8] = include_bytes!("../certs/ca.pem");
/// A process of the test cluster: its certificate, signed by [`CA`].
pub const NODE_CERT: &[u8] = include_bytes!("../certs/node.pem");
/// The private key of [`NODE_CERT`].
pub const NODE_KEY: &[u8] = include_bytes!("../certs/node.key");
/// Another certificate authority.
pub const ROGUE_CA: &[u8] = include_bytes!("../certs/rogue-ca.pem");
/// A process of another authority ([`ROGUE_CA`]), for the same names as [`NODE_CERT`].
pub const ROGUE_CERT: &[u8] = include_bytes!("../certs/rogue.pem");
/// The private key of [`ROGUE_CERT`].
pub const ROGUE_KEY: &[u8] = include_bytes!("../certs/rogue.key");

/// Three PEM files in one directory: an authority, a certificate and its key.
#[derive(Clone, Debug)]
pub struct Files {
    /// The certificate authority.
    pub ca: PathBuf,
    /// The process's certificate.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

/// Writes `ca`, `cert` and `key` into `dir` under `name` (`NAME-ca.pem`, `NAME.pem`,
/// `NAME.key`) and returns their paths.
pub fn write(dir: &Path, name: &str, ca: &[u8], cert: &[u8], key: &[u8]) -> io::Result<Files> {
    let files = Files {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.ca, ca)?;
    std::fs::write(&files.cert, cert)?;
    std::fs::write(&files.key, key)?;
    Ok(files)
}
