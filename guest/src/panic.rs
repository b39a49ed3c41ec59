//! The panic handler: message on the console, a Panic report, exit 101.

use core::fmt::{self, Write};
use core::panic::PanicInfo;

use kvmkit_guest_abi::{Report, ReportKind, REPORT_NAME_LEN};

use crate::{exit, report, serial, smp};

/// Collects the start of a message into a report name, dropping the rest.
struct NameBuf {
    bytes: [u8; REPORT_NAME_LEN],
    len: usize,
}

impl Write for NameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let n = c.len_utf8();
            if self.len + n > REPORT_NAME_LEN {
                break;
            }
            c.encode_utf8(&mut self.bytes[self.len..]);
            self.len += n;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    serial::print_panic(format_args!("kvmkit-guest: panic: {info}\n"));
    let mut report = Report::new(ReportKind::Panic, smp::current_cpu());
    let mut name = NameBuf {
        bytes: [0; REPORT_NAME_LEN],
        len: 0,
    };
    let _ = write!(name, "{}", info.message());
    report.name = name.bytes;
    report::send(&report);
    exit::exit(exit::PANIC)
}
