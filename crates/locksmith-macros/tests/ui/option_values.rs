use locksmith::locked;

#[locked(renew = "no")]
fn renew() -> locksmith::Result<()> {
    Ok(())
}

#[locked(store = "")]
fn store() -> locksmith::Result<()> {
    Ok(())
}

#[locked(crate = "locksmith")]
fn krate() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
