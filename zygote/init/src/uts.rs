//! Step 5b, hostname: the jail's UTS namespace gets the spec's hostname, so nothing inside can
//! learn the host's.

use nix::errno::Errno;

/// `sethostname` failed.
#[derive(Debug, thiserror::Error)]
#[error("sethostname {name:?}: {errno}")]
pub struct HostnameError {
    /// The requested hostname.
    pub name: String,
    /// Why.
    pub errno: Errno,
}

/// Sets the hostname of the (new) UTS namespace.
pub fn set_hostname(name: &str) -> Result<(), HostnameError> {
    nix::unistd::sethostname(name).map_err(|errno| HostnameError {
        name: name.to_owned(),
        errno,
    })
}
