//! Placeholder until the SR builder lands (sr-delivery branch).
pub fn new_uid() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    format!("2.25.{}", u128::from_be_bytes(b))
}
