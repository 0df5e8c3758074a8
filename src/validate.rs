//! Request validation, decided once for every door: the socket server checks each run with it
//! before admission, and the HTTP shim checks the same code rule before it forwards (to answer
//! 400 without a round trip). Paths follow the one rule of `sandfork_ipc::path`, which the
//! child's reports are held to as well.

use std::collections::HashSet;

use sandfork_protocol::{FileData, RejectKind};

pub use sandfork_ipc::path::check_relative_path;

use crate::config::Limits;

/// The program text: non-empty UTF-8 without NUL bytes; anything else is a malformed request,
/// whichever door it came in by.
pub fn code(code: &[u8]) -> Result<(), String> {
    if code.is_empty() {
        return Err("code is empty".into());
    }
    if let Err(err) = std::str::from_utf8(code) {
        return Err(format!(
            "code is not valid UTF-8 (invalid byte at offset {})",
            err.valid_up_to()
        ));
    }
    if let Some(at) = code.iter().position(|&b| b == 0) {
        return Err(format!("code contains a NUL byte at offset {at}"));
    }
    Ok(())
}

/// A run's code for its mode: [`code`], except that a floor run (`Mode::Floor`, nothing runs)
/// must bring none.
pub fn run_code(mode: sandfork_protocol::Mode, text: &[u8]) -> Result<(), String> {
    match mode {
        sandfork_protocol::Mode::Floor if text.is_empty() => Ok(()),
        sandfork_protocol::Mode::Floor => Err("a floor run takes no code".into()),
        _ => code(text),
    }
}

/// A request's input files: each path inside the working directory, none given twice or as both
/// a file and a directory, at most `max_files` of them and `files_bytes` in all.
pub fn files(files: &[FileData], limits: &Limits) -> Result<(), (RejectKind, String)> {
    if files.len() as u64 > limits.max_files {
        return Err((
            RejectKind::InvalidFiles,
            format!("{} files; the limit is {}", files.len(), limits.max_files),
        ));
    }
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for file in files {
        check_relative_path(&file.path).map_err(|e| (RejectKind::InvalidFiles, e))?;
        if !seen.insert(file.path.as_str()) {
            return Err((
                RejectKind::InvalidFiles,
                format!("file {:?} is given twice", file.path),
            ));
        }
        // A file may not also be a directory of another one ("a" and "a/b").
        total += file.content.len() as u64;
    }
    for file in files {
        let mut prefix = String::new();
        for part in file
            .path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, dirs)| dirs)
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if seen.contains(prefix.as_str()) {
                return Err((
                    RejectKind::InvalidFiles,
                    format!("{prefix:?} is both a file and a directory"),
                ));
            }
        }
    }
    if total > limits.files_bytes {
        return Err((
            RejectKind::TooLarge,
            format!(
                "input files are {total} bytes; the limit is {}",
                limits.files_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_must_be_text() {
        assert!(code(b"print(1)").is_ok());
        assert!(code(b"").unwrap_err().contains("empty"));
        assert!(code(b"print(1)\xff").unwrap_err().contains("UTF-8"));
        assert!(code(b"print(1)\0").unwrap_err().contains("NUL"));
    }

    #[test]
    fn file_sets_are_checked() {
        use sandfork_protocol::FileData;
        let limits = Limits::default();
        let file = |path: &str, n: usize| FileData {
            path: path.into(),
            content: vec![b'x'; n],
        };
        assert!(files(&[file("a", 1), file("d/b", 2)], &limits).is_ok());
        let dup = files(&[file("a", 1), file("a", 1)], &limits);
        assert_eq!(dup.unwrap_err().0, RejectKind::InvalidFiles);
        let clash = files(&[file("a", 1), file("a/b", 1)], &limits);
        assert_eq!(clash.unwrap_err().0, RejectKind::InvalidFiles);
        let many: Vec<_> = (0..101).map(|i| file(&format!("f{i}"), 0)).collect();
        assert_eq!(
            files(&many, &limits).unwrap_err().0,
            RejectKind::InvalidFiles
        );
        let big = files(&[file("big", 8 * 1024 * 1024 + 1)], &limits);
        assert_eq!(big.unwrap_err().0, RejectKind::TooLarge);
    }
}
