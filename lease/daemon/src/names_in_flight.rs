//! Names (lease ids, fleet operations) with work in flight, one piece of work per name at
//! a time: [`NamesInFlight::enter`] takes a name, or says it is taken; the [`Entered`] it
//! returns gives the name back when dropped, also when its task panics or is cancelled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The names taken now. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct NamesInFlight {
    names: Arc<Mutex<HashSet<String>>>,
}

/// A name taken; free again once this is dropped.
#[derive(Debug)]
pub struct Entered {
    names: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl NamesInFlight {
    fn names(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `name`, or `None` if it is taken already.
    pub fn enter(&self, name: &str) -> Option<Entered> {
        self.names().insert(name.to_string()).then(|| Entered {
            names: Arc::clone(&self.names),
            name: name.to_string(),
        })
    }

    /// Whether `name` is taken.
    pub fn contains(&self, name: &str) -> bool {
        self.names().contains(name)
    }
}

impl Entered {
    /// The name this holds.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_taken_once_until_given_back() {
        let names = NamesInFlight::default();
        let a = names.enter("a").expect("free");
        assert!(names.enter("a").is_none(), "taken");
        assert!(names.contains("a"));
        let b = names.enter("b").expect("another name is free");
        drop(a);
        assert!(!names.contains("a"));
        assert!(names.enter("a").is_some(), "free again");
        drop(b);
        assert!(!names.contains("b"));
    }
}
