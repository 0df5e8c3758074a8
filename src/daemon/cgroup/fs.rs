//! The kernel behind a seam (STYLE habit 7): every cgroupfs access of this module goes through
//! [`CgroupFs`], so the v1 and v2 logic runs unchanged against the host (`HostFs`) and against
//! the fake cgroupfs of the unit tests, which imitates the kernel's few rules that matter here
//! (rmdir refused while populated, the v2 no-internal-process rule, v1 memsw ordering).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How a control file is opened ahead of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `cgroup.procs`: attaching is a write.
    Write,
    /// A counter or flat-keyed file read after every run (`cpu.stat`, `memory.oom_control`).
    Read,
    /// Reset by a write and read through the same descriptor (`cpuacct.usage`; v2
    /// `memory.peak`, whose reset applies to this descriptor only).
    ReadWrite,
}

/// The file-system operations slot cgroups need.
pub trait CgroupFs: fmt::Debug + Send + Sync {
    fn exists(&self, path: &Path) -> bool;
    /// Reads a whole control file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes `value` to a control file in one `write(2)` (cgroupfs parses each write whole).
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Opens a control file to be used many times (attach, limits, counters).
    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn ControlFile>>;
    /// `mkdir`: creates a cgroup (the kernel fills in its control files).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// `rmdir`: removes a cgroup; fails with EBUSY while it has processes or child cgroups.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// The child cgroups (subdirectories) of a cgroup.
    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// A control file opened once and used through the same descriptor afterwards.
pub trait ControlFile: fmt::Debug + Send + Sync {
    /// One `write(2)` of `value`.
    fn write(&self, value: &str) -> io::Result<()>;
    /// The file's content, read from offset 0.
    fn read(&self) -> io::Result<String>;
}

/// The real cgroupfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

impl CgroupFs for HostFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT: a missing control file is an error, never a new regular file.
        let file = OpenOptions::new().write(true).open(path)?;
        write_once(&file, value)
    }

    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn ControlFile>> {
        // std opens with O_CLOEXEC: these descriptors never reach zygote-init or a child.
        let file = OpenOptions::new()
            .read(access != Access::Write)
            .write(access != Access::Read)
            .open(path)?;
        Ok(Box::new(HostFile(file)))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }
}

/// A pre-opened host control file.
#[derive(Debug)]
struct HostFile(File);

impl ControlFile for HostFile {
    fn write(&self, value: &str) -> io::Result<()> {
        write_once(&self.0, value)
    }

    fn read(&self) -> io::Result<String> {
        // pread from 0: the descriptor is shared by successive reads and never seeks.
        let mut data = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        loop {
            let n = self.0.read_at(&mut buf, data.len() as u64)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(data).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }
}

/// One `write(2)`; a short write is an error (cgroupfs takes a value whole or not at all).
fn write_once(mut file: &File, value: &str) -> io::Result<()> {
    let n = file.write(value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", value.len()),
        ));
    }
    Ok(())
}
