use locksmith::locked;

#[locked(tll = "30s")]
fn job() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
