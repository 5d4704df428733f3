use locksmith::locked;

#[locked(on_locked = "busy")]
async fn job() -> Result<u32, locksmith::Error> {
    Ok(1)
}

fn main() {}
