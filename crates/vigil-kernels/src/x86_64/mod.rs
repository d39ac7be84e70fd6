//! AVX2 + FMA kernels. Each file declares its routine to tract with `inventory::submit!`.

pub mod depthwise_c;
