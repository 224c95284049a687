//! The provider (being written).
