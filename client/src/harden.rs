//! Process hardening: keep secrets out of core dumps and swap.
//!
//! * `RLIMIT_CORE` 0 and `PR_SET_DUMPABLE` 0: no core file, no ptrace by other
//!   users' processes, no `/proc/PID/mem` reads.
//! * `mlockall`: every page the process has and will have stays in RAM. With
//!   `MCL_FUTURE` an allocation beyond `RLIMIT_MEMLOCK` would fail, so it is
//!   used only when the limit is unlimited or we run with the privilege to lock
//!   without limit; otherwise the current pages are locked if they fit, and the
//!   user is told what is not protected.

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
