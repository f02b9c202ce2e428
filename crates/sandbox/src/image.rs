//! A disk of its own for each instance: its directory's files live in an ext4 filesystem inside
//! one sparse file (a loop image) whose size is the tier's disk limit, so no code in the
//! instance can write past it (nor use the host filesystem's reserved blocks or inodes).
//!
//! Why an image and not project quotas: quotas need a kernel built with them and a filesystem
//! made with the `project` feature and mounted with `prjquota`, which an operator's home seldom
//! is; an image works on any filesystem that holds sparse files. Its costs, measured on a 2-core
//! VM: 15-25 ms to make, about 4.5 MiB of real disk per image whatever its size, a 15 ms mount
//! at each wake, and an fsync'd 4 KiB write of about 0.75 ms against 0.22 ms on the host
//! filesystem (two filesystems' flushes instead of one).
//!
//! The server makes an image with `mkfs.ext4 -d`, which fills it from a staged directory
//! without mounting anything. It is mounted only inside the instance's own mount namespace, by
//! the instance process while it is still host root and before any other wall ([`attach`]):
//! the mount and its loop device then end with the instance, by the kernel's hand, however the
//! instance or the server ends. Nothing of it is left on the host to clean up.

use std::io::{Error, Result};
use std::path::{Path, PathBuf};

/// An instance's disk: the image file and the size it must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub path: PathBuf,
    /// The tier's disk limit. An image smaller than this grows at its next attach; one larger
    /// stays as it is (ext4 cannot shrink while mounted).
    pub bytes: u64,
}

/// Bytes of the filesystem per inode: one per 256 KiB (an instance keeps a handful of database
/// files), which keeps an empty image's metadata to a few MiB.
const BYTES_PER_INODE: &str = "262144";

/// Makes `image` (`bytes` long, sparse) holding a copy of what `staged` holds, owned as it is
/// there. The image appears whole or not at all: it is made beside its final name and renamed.
pub fn build(image: &Path, staged: &Path, bytes: u64) -> Result<()> {
    let partial = image.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let out = std::process::Command::new(mkfs()?)
        // A journal (a crash never costs the instance its filesystem) and extents, whatever
        // the machine's mke2fs.conf says; no blocks reserved for root.
        .args(["-q", "-F", "-t", "ext4", "-O", "has_journal,extent", "-m", "0", "-i", BYTES_PER_INODE])
        // Lazy: the inode tables and journal are not zeroed now (a fresh sparse file reads as
        // zeros), so making an image of any size writes a few MiB.
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0"])
        .arg("-d")
        .arg(staged)
        .arg(&partial)
        .arg(format!("{}k", bytes / 1024))
        .output()
        .map_err(|e| Error::new(e.kind(), format!("run mkfs.ext4: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::other(format!(
            "mkfs.ext4 {}: {} {}",
            partial.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(&partial)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.sync_all()?;
    std::fs::rename(&partial, image)?;
    if let Some(parent) = image.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Where `mkfs.ext4` is (e2fsprogs), or an error that says what to install.
pub fn mkfs() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::new(std::io::ErrorKind::NotFound, "mkfs.ext4 not found: install e2fsprogs"))
}

/// Mounts `image` at `target` in this process's mount namespace, which the caller has made its
/// own: through a loop device that frees itself when the mount goes, with direct I/O (the
/// host's page cache does not hold a second copy of what the instance's already does), no
/// devices, setuid files or programs, and read-only on an error rather than further damage. An
/// image smaller than its size is grown first. Needs host root (`CAP_SYS_ADMIN` of the first
/// user namespace).
#[cfg(target_os = "linux")]
pub fn attach(image: &Image, target: &Path) -> Result<()> {
    let grow = std::fs::metadata(&image.path)?.len() < image.bytes;
    if grow {
        std::fs::OpenOptions::new().write(true).open(&image.path)?.set_len(image.bytes)?;
    }
    // Opened for direct I/O: the loop device reads and writes it as the file was opened.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&image.path)?;
    lock_whole(&file, &image.path)?;
    // The device stays open until the mount holds it: a loop device set to clear itself does
    // so when its last opener closes it.
    let (device, open_device) = loopdev::configure(&file)?;
    drop(file);
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    nix::mount::mount(Some(device.as_path()), target, Some("ext4"), flags, Some("errors=remount-ro"))
        .map_err(|e| Error::new(std::io::Error::from(e).kind(), format!("mount {}: {e}", image.path.display())))?;
    drop(open_device);
    if grow {
        grow_to_device(target)?;
    }
    Ok(())
}

/// Takes the image's one lock, on the open file the loop device is about to hold: the lock
/// then lasts as long as the loop device does, past this process, so a wake that follows a
/// killed instance waits until the kernel has let go of the earlier mount instead of mounting
/// the same filesystem twice.
#[cfg(target_os = "linux")]
fn lock_whole(file: &std::fs::File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        // SAFETY: a lock on a descriptor the caller holds open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::new(e.kind(), format!("lock {}: {e}", path.display())));
        }
        if started.elapsed() > WAIT {
            return Err(Error::other(format!("{} is still mounted by an earlier run after {WAIT:?}", path.display())));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Grows the mounted ext4 at `target` to fill its device (online, as resize2fs does).
#[cfg(target_os = "linux")]
fn grow_to_device(target: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(target)?;
    let stat = nix::sys::statvfs::fstatvfs(&dir).map_err(Error::from)?;
    // The device's size in the filesystem's blocks: its size in 512-byte sectors, from sysfs.
    let block = stat.fragment_size().max(1024);
    let mut blocks: u64 = loopdev::sectors_of(target)? * 512 / block;
    // EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64).
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    // SAFETY: the ioctl reads one u64 from `blocks`.
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut blocks) } != 0 {
        let e = Error::last_os_error();
        return Err(Error::new(e.kind(), format!("grow {}: {e}", target.display())));
    }
    Ok(())
}

/// The two loop-device calls an attach needs, by hand: two ioctls and their structs from
/// <linux/loop.h> do not warrant a crate that generates bindings at build time.
#[cfg(target_os = "linux")]
mod loopdev {
    use std::io::{Error, Result};
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    const LO_FLAGS_DIRECT_IO: u32 = 16;

    /// `struct loop_info64` of <linux/loop.h>.
    #[repr(C)]
    struct Info64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        size_limit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }

    /// `struct loop_config` of <linux/loop.h>.
    #[repr(C)]
    struct Config {
        fd: u32,
        block_size: u32,
        info: Info64,
        reserved: [u64; 8],
    }

    /// Binds `file` to a free loop device, set to free itself once nothing holds it (the mount
    /// about to be made), and answers the device's path and the device, open.
    pub fn configure(file: &std::fs::File) -> Result<(PathBuf, std::fs::File)> {
        let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
        // Another process may take the free device between the two calls: then try the next.
        for attempt in 0..16u32 {
            // SAFETY: an ioctl without argument on the control device.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                let e = Error::last_os_error();
                return Err(Error::new(e.kind(), format!("find a free loop device: {e}")));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
            // SAFETY: all-zero is a valid loop_config.
            let mut config: Config = unsafe { std::mem::zeroed() };
            config.fd = file.as_raw_fd() as u32;
            config.info.flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
            // SAFETY: the ioctl reads one loop_config.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
                return Ok((path, device));
            }
            let e = Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(Error::new(e.kind(), format!("configure {}: {e}", path.display())));
            }
            std::thread::sleep(std::time::Duration::from_millis(5 << attempt.min(5)));
        }
        Err(Error::other("no free loop device after 16 tries"))
    }

    /// The size in 512-byte sectors of the block device mounted at `target`.
    pub fn sectors_of(target: &Path) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(target)?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let size = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/size"))?;
        size.trim().parse().map_err(|e| Error::other(format!("/sys/dev/block/{major}:{minor}/size: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_made_whole_from_its_staged_files_and_costs_little_disk() {
        if mkfs().is_err() {
            eprintln!("skipped: no mkfs.ext4 (e2fsprogs) on this machine");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged");
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("store.db"), b"records").unwrap();
        let image = dir.path().join("i.ext4");
        build(&image, &staged, 8 << 30).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        assert!(meta.blocks() * 512 < 16 << 20, "an 8 GiB image takes {} bytes of disk", meta.blocks() * 512);
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!image.with_extension("partial").exists());
        // A failed make leaves nothing behind under either name.
        let bad = dir.path().join("bad.ext4");
        assert!(build(&bad, &dir.path().join("missing"), 8 << 20).is_err());
        assert!(!bad.exists() && !bad.with_extension("partial").exists());
    }
}
