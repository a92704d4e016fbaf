//! `Namespace::id_from_str`, which parses ids that clients hand back.
//!
//! The namespace comes from an in-memory runtime built once for the whole
//! run: parsing an id touches nothing but the namespace's keys.
//!
//! Checks that parsing never panics, that every refusal is an
//! `Error::InvalidId` naming one of the three reasons in a short message
//! (however long the text), and that an accepted text is the id's own text
//! form (in either case).

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stead::{Context, Error, Namespace, Runtime, durable_object};

/// An object type for the namespace; it is never called.
pub struct Probe;

#[durable_object]
impl Probe {
    pub async fn new(_ctx: Context) -> Self {
        Probe
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text.
    Text(String),
    /// A genuine id with the characters from `at` replaced by `with`.
    Edit { at: u8, upper: bool, with: String },
}

fuzz_target!(|input: Input| {
    let (namespace, genuine) = namespace();
    let text = match input {
        Input::Text(text) => text,
        Input::Edit { at, upper, with } => {
            let at = usize::from(at) % (genuine.len() + 1);
            let end = (at + with.chars().count()).min(genuine.len());
            let text = format!("{}{with}{}", &genuine[..at], &genuine[end..]);
            if upper { text.to_uppercase() } else { text }
        }
    };
    match namespace.id_from_str(&text) {
        Ok(id) => assert_eq!(id.to_string(), text.to_ascii_lowercase()),
        Err(Error::InvalidId(message)) if message.len() > 1200 => {
            panic!("a message of {} bytes for {} bytes of text", message.len(), text.len())
        }
        Err(Error::InvalidId(message)) => assert!(
            message.contains("an object id is 64 hex digits")
                || message.contains("an object id is made of hex digits")
                || message.contains("was not minted by the namespace of `Probe`"),
            "{message}"
        ),
        Err(other) => panic!("not an `InvalidId`: {other:?}"),
    }
});

/// The namespace of `Probe` in a runtime built on first use, and the text
/// of one of its ids.
fn namespace() -> &'static (Namespace<Probe>, String) {
    static NAMESPACE: OnceLock<(Namespace<Probe>, String)> = OnceLock::new();
    NAMESPACE.get_or_init(|| {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let runtime = tokio
            .block_on(
                Runtime::builder().in_memory().secret("a secret for the fuzz target").host::<Probe>().build(),
            )
            .unwrap();
        // The tokio runtime stays for the whole run: the stead runtime's tasks live on it.
        Box::leak(Box::new(tokio));
        let namespace = runtime.namespace::<Probe>();
        let genuine = namespace.id_from_name("genuine").to_string();
        (namespace, genuine)
    })
}
