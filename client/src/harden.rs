//! Process hardening: keep secrets out of core dumps and swap.
//!
//! * `RLIMIT_CORE` 0 and `PR_SET_DUMPABLE` 0: no core file, no ptrace by other
//!   users' processes, no `/proc/PID/mem` reads.
//! * `mlockall`: every page the process has and will have stays in RAM. With
//!   `MCL_FUTURE` an allocation beyond `RLIMIT_MEMLOCK` would fail, so it is
//!   used only when the limit is unlimited or we run with the privilege to lock
//!   without limit; otherwise the current pages are locked if they fit, and the
//!   user is told what is not protected.
//! * [`take_env`]: a secret passed in the environment (`GHOSTWIRE_CODE`) is copied out, then
//!   its bytes are overwritten where the kernel put them, so `/proc/PID/environ` no longer shows
//!   it. Removing the variable alone (`remove_var`) only unlinks it from libc's list; the kernel
//!   reads the original block. This is the crate's one `unsafe` block (glibc only; elsewhere the
//!   variable is only removed, and `/proc/PID/environ` keeps it, readable by root alone since
//!   the process is non-dumpable).

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What hardening achieved; warnings are for the user.
#[derive(Debug, Default)]
pub struct Hardening {
    /// Problems to show the user, each a full sentence.
    pub warnings: Vec<String>,
}

/// Applies every protection the OS allows.
pub fn harden() -> Hardening {
    let mut h = Hardening::default();
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        h.warnings.push(format!("could not disable core dumps ({e}); a crash could write secrets to disk"));
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        h.warnings.push(format!("could not mark the process non-dumpable ({e})"));
    }
    let unlimited = matches!(getrlimit(Resource::RLIMIT_MEMLOCK), Ok((soft, _)) if soft == RLIM_INFINITY);
    let privileged = nix::unistd::geteuid().is_root();
    let flags = if unlimited || privileged {
        MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE
    } else {
        MlockAllFlags::MCL_CURRENT
    };
    match mlockall(flags) {
        Ok(()) if flags.contains(MlockAllFlags::MCL_FUTURE) => {}
        Ok(()) => h.warnings.push(
            "memory allocated from now on may be swapped to disk: the locked-memory limit is too low \
             to lock it (raise it with `ulimit -l unlimited`)"
                .into(),
        ),
        Err(e) => h.warnings.push(format!(
            "could not lock memory ({e}): keys and messages may be swapped to disk \
             (raise the locked-memory limit with `ulimit -l unlimited`)"
        )),
    }
    h
}

/// Reads the environment variable `name`, removes it, and wipes its value's bytes in the
/// process's environment block (see the module docs). Call it before any other thread starts.
pub fn take_env(name: &str) -> Option<zeroize::Zeroizing<String>> {
    let value = std::env::var(name).ok().map(zeroize::Zeroizing::new);
    if value.is_some() {
        wipe_env_value(name);
    }
    std::env::remove_var(name);
    value
}

/// Overwrites with NULs the value of every `NAME=value` entry in `environ`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn wipe_env_value(name: &str) {
    use nix::libc::{c_char, environ};
    let prefix = format!("{name}=");
    // SAFETY: sound because every pointer read or written here is one glibc keeps valid and
    // nobody else touches while it runs:
    // * `environ` is glibc's NULL-terminated array of pointers to NUL-terminated strings. It is
    //   only changed by setenv/putenv/unsetenv (and std::env's wrappers of them); `take_env` is
    //   called from `main` before the client starts any thread, so nothing changes it meanwhile.
    // * We walk the array up to its NULL and read each string only up to its NUL (`CStr`).
    // * We write only bytes strictly before an entry's NUL, which belong to that entry's string:
    //   either the block the kernel copied onto the stack at exec (writable, the memory
    //   /proc/PID/environ shows) or a string setenv allocated (writable heap). Writing NULs there
    //   makes the value an empty string; the array, the other strings and every terminator stay
    //   valid.
    // * No Rust reference points into these bytes: `std::env::var` returned an owned copy.
    // * `write_volatile` keeps the compiler from dropping the writes as dead stores.
    unsafe {
        let mut entry: *mut *mut c_char = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let text = *entry;
            let len = std::ffi::CStr::from_ptr(text).to_bytes().len();
            if len >= prefix.len() && std::slice::from_raw_parts(text.cast::<u8>(), prefix.len()) == prefix.as_bytes() {
                for i in prefix.len()..len {
                    std::ptr::write_volatile(text.add(i), 0);
                }
            }
            entry = entry.add(1);
        }
    }
}

/// Not glibc: the variable is only removed (see the module docs).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn wipe_env_value(_name: &str) {}
