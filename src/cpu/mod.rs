//! CPU reference implementations (rayon). Each module computes exactly the function of its GPU
//! twin in [`crate::ops`]; tests compare the two, and the CPU backend trains with these.

pub mod cast;
