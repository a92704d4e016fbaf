//! Objects and helpers that several test files share.

#![allow(dead_code)] // each test file uses its own part
// Remote methods are `pub` by definition, even in a private module.
#![allow(unreachable_pub)]

use stead::{Context, durable_object};

/// A counter that lives in memory only.
pub struct Counter {
    value: u64,
}

#[durable_object]
impl Counter {
    pub async fn new(_ctx: Context) -> Self {
        Counter { value: 0 }
    }

    pub async fn increment(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }

    pub async fn get(&self) -> u64 {
        self.value
    }
}
