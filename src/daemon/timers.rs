//! Periodic chores of the event loop (rescan, watchdog, status file, tmp/ cleaning), each an
//! [`Every`] that says when it is due.

use std::time::{Duration, Instant};

pub struct Every {
    period: Duration,
    last: Instant,
}

impl Every {
    pub fn new(period: Duration) -> Every {
        Every {
            period,
            last: Instant::now(),
        }
    }

    /// True once per period; the period restarts from now.
    pub fn due(&mut self) -> bool {
        let due = self.last.elapsed() >= self.period;
        if due {
            self.reset();
        }
        due
    }

    /// Restarts the period (the chore was just done for another reason).
    pub fn reset(&mut self) {
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period() {
        let mut e = Every::new(Duration::from_millis(30));
        assert!(!e.due());
        std::thread::sleep(Duration::from_millis(35));
        assert!(e.due());
        assert!(!e.due());
    }
}
