use locksmith::locked;

#[locked]
fn count() -> u32 {
    1
}

#[locked]
async fn nothing() {}

fn main() {}
