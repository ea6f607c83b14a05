//! A tiny command-line reader: each accessor takes its option out of the list; `finish`
//! refuses whatever is left.

use std::time::Duration;

pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(rest: Vec<String>) -> Args {
        Args { rest }
    }

    /// Removes `--name VALUE` and returns VALUE (the last one if repeated).
    pub fn value(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        while let Some(i) = self.rest.iter().position(|a| a == name) {
            if i + 1 >= self.rest.len() {
                // Left for `finish` to report.
                return found;
            }
            let v = self.rest.remove(i + 1);
            self.rest.remove(i);
            found = Some(v);
        }
        found
    }

    /// Removes every `--name VALUE` and returns the values in order.
    pub fn values(&mut self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        while let Some(i) = self.rest.iter().position(|a| a == name) {
            if i + 1 >= self.rest.len() {
                break;
            }
            found.push(self.rest.remove(i + 1));
            self.rest.remove(i);
        }
        found
    }

    pub fn required(&mut self, name: &str) -> Result<String, String> {
        self.value(name).ok_or(format!("{name} is required"))
    }

    /// Removes the flag `--name`; true if it was there.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    pub fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name} {v}: not a number")),
        }
    }

    pub fn secs(&mut self, name: &str, default: f64) -> Result<Duration, String> {
        let v: f64 = self.number(name, default)?;
        if !(v.is_finite() && v > 0.0 && v < 86_400.0) {
            return Err(format!("{name} {v}: expected seconds, > 0"));
        }
        Ok(Duration::from_secs_f64(v))
    }

    pub fn millis(&mut self, name: &str, default: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(self.number(name, default)?))
    }

    pub fn finish(self) -> Result<(), String> {
        match self.rest.first() {
            None => Ok(()),
            Some(a) => Err(format!("unexpected argument {a:?} (try --help)")),
        }
    }
}
