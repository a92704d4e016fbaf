//! What "committed" means for a turn's writes.

/// How far a reply is allowed to run ahead of the disk.
///
/// Every turn's writes are committed before its reply is released (the
/// *output gate*); durability says what "committed" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A reply means the turn's writes are on disk: the commit is fsynced
    /// first. Survives a process crash and a power loss. The default.
    #[default]
    Full,
    /// A reply means the turn's writes are in the operating system's hands:
    /// they survive a crash of the process, but a power loss or kernel crash
    /// may lose the last turns. Commits are much cheaper (no fsync per turn).
    Normal,
}
