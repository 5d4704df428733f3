use locksmith::locked;

#[locked(wait = true)]
fn flag() -> locksmith::Result<()> {
    Ok(())
}

#[locked(wait = "soon")]
fn soon() -> locksmith::Result<()> {
    Ok(())
}

#[locked(wait = 5)]
fn unitless() -> locksmith::Result<()> {
    Ok(())
}

#[locked(wait = "never")]
fn not_a_keyword() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
