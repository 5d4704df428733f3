use locksmith::locked;

#[locked(ttl = "30s", wait = forever, ttl = "1m")]
fn job() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
