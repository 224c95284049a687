//! The mock cloud API (being written).
