//! The one rule for a path inside a run's working directory, applied to the files a request
//! brings in and to the files a child reports back.

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest path component accepted, in bytes (NAME_MAX).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// A path inside the working directory: relative, no `.`/`..`/empty components, no NUL,
/// components of at most 255 bytes, at most 1024 bytes in all.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a file path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("file path of {} bytes is too long", path.len()));
    }
    if path.contains('\0') {
        return Err(format!("file path {path:?} contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(format!("file path {path:?} is absolute"));
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "file path {path:?} has an empty, '.' or '..' component"
            ));
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(format!("file path {path:?} has a component over 255 bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_must_stay_inside_the_working_directory() {
        for good in ["a", "a.txt", "dir/sub/file.csv", "..hidden", "a..b"] {
            assert!(check_relative_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a\0b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative_path(&"x".repeat(256)).is_err());
        assert!(check_relative_path(&"a/".repeat(600)).is_err());
    }
}
