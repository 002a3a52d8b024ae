//! Linux plumbing under the operations: the mount table (read from /proc/self/mountinfo, never
//! by stat-ing a mount that may hang), fusectl and connection aborts, `umount2`, process
//! identities and signals, the /proc scan for who holds a mount, whether the kernel says a mount
//! is served, attach overlays as the mount table shows them, and running a call that may block
//! on a helper thread with a deadline. Nothing here knows about wsfs's stores or commands.

pub mod bounded;
pub mod fusectl;
pub mod holders;
pub mod mountinfo;
pub mod overlay;
pub mod probe;
pub mod process;
pub mod unmount;
