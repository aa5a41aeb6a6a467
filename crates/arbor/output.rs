//! The CLI's standard output. `arbor … | head` closes the pipe early; Rust
//! ignores SIGPIPE, so a plain `println!` would panic (exit 101) and a
//! `writeln!` would fail the command (exit 2). Here a closed pipe silences
//! the rest of the output and the command ends with its own exit code. Any
//! other write error (a full disk under a redirect) ends the command with
//! exit 2 and says so: output is never lost without a word.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output, locked, that a closed pipe silences.
pub struct Stdout(io::StdoutLock<'static>);

/// The CLI's standard output.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn closed(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
        true
    } else {
        false
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if CLOSED.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        match self.0.write(buf) {
            Err(e) if closed(&e) => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if CLOSED.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.0.flush() {
            Err(e) if closed(&e) => Ok(()),
            other => other,
        }
    }
}

/// Ends the command when standard output fails for another reason than a
/// closed pipe.
pub fn failed(e: &io::Error) -> ! {
    eprintln!("arbor: error: writing to standard output: {e}");
    std::process::exit(2)
}

/// `println!` on [`stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!($crate::output::stdout(), $($arg)*) {
            $crate::output::failed(&e);
        }
    }};
}

/// `print!` on [`stdout`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!($crate::output::stdout(), $($arg)*) {
            $crate::output::failed(&e);
        }
    }};
}
