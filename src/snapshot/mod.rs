//! Providers that capture a backup's data: `files` (portable packed copy) and `ebs`
//! (EBS snapshots), with the volume discovery and filesystem freeze the latter needs.

pub mod discover;
pub mod ebs;
pub mod ec2;
pub mod files;
pub mod freeze;
pub mod progress;
