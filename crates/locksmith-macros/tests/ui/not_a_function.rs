use locksmith::locked;

#[locked]
struct Job;

#[locked]
const fn constant() -> locksmith::Result<()> {
    Ok(())
}

fn main() {}
