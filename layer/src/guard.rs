//! The two rules around every hook's own logic: it never unwinds into C (a panic is
//! caught and the hook falls back to the real call) and it never runs re-entrantly (a
//! hook entered while this thread is already inside one, e.g. through an allocation
//! or `dlsym`, goes straight to the real function). Plus `errno` save/restore, so the
//! program sees the `errno` of the real call and not of the layer's own work.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Whether this thread is inside a hook's own logic. Const-initialised and without
    /// destructor: accessing it never allocates and works during thread teardown.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` unless this thread is already inside the layer's logic; `None` when it did
/// not run or panicked (the caller then behaves like the real function).
pub fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let entered = BUSY.try_with(|busy| !busy.replace(true)).unwrap_or(false);
    if !entered {
        return None;
    }
    let saved = errno();
    let result = catch_unwind(AssertUnwindSafe(f)).ok();
    set_errno(saved);
    let _ = BUSY.try_with(|busy| busy.set(false));
    result
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the
    // thread's lifetime.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_caught_nesting_is_refused_and_errno_is_kept() {
        set_errno(7);
        assert_eq!(quietly(|| -> u8 { panic!("inside") }), None);
        assert_eq!(errno(), 7);
        assert_eq!(quietly(|| quietly(|| 1)), Some(None));
        assert_eq!(
            quietly(|| {
                set_errno(99);
                2
            }),
            Some(2)
        );
        assert_eq!(errno(), 7);
        assert_eq!(quietly(|| 3), Some(3), "the flag is cleared after a panic");
    }
}
