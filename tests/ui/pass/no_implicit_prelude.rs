#![no_implicit_prelude]

use ::stead::durable_object;

pub struct Plain {
    hits: u64,
}

#[durable_object]
impl Plain {
    pub async fn new(_ctx: ::stead::Context) -> Self {
        Plain { hits: 0 }
    }

    pub async fn hit(&mut self, n: u64, label: ::std::string::String) -> (u64, ::std::string::String) {
        self.hits += n;
        (self.hits, label)
    }

    // Its id is computed with `cfg!`, which must resolve without a prelude too.
    #[cfg(any())]
    pub fn absent(&self) -> u64 {
        0
    }

    pub fn fallible(&self) -> ::core::result::Result<u64, ::std::string::String> {
        ::core::result::Result::Ok(self.hits)
    }
}

fn main() {}
