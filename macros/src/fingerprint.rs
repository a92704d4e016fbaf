//! Signature fingerprints: a request carries the hash of the caller's idea of
//! the method, so that a node running another build answers `Incompatible`
//! instead of decoding garbage.

/// FNV-1a, 64 bits: stable across compilers and platforms, unlike
/// `std::hash`. The input is the method's name and the text of its argument
/// and return types, so renaming a type path (`u64` vs `core::primitive::u64`)
/// changes the fingerprint, which errs on the side of refusing.
pub(crate) fn fingerprint(name: &str, args: &[String], output: &str) -> u64 {
    let text = format!("{name}({})->{output}", args.join(","));
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The text of a type with all whitespace removed.
pub(crate) fn type_text(ty: &impl quote::ToTokens) -> String {
    ty.to_token_stream().to_string().chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_by_name_arguments_and_output() {
        let base = fingerprint("add", &["u64".into()], "u64");
        assert_eq!(base, fingerprint("add", &["u64".into()], "u64"));
        assert_ne!(base, fingerprint("sub", &["u64".into()], "u64"));
        assert_ne!(base, fingerprint("add", &["u32".into()], "u64"));
        assert_ne!(base, fingerprint("add", &["u64".into()], "()"));
    }
}
