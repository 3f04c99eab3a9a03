//! Buildium emulator (in progress).
