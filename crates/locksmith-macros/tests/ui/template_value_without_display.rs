use locksmith::locked;

#[locked(name = "batch:{ids}")]
fn batch(ids: Vec<u64>) -> locksmith::Result<()> {
    let _ = ids;
    Ok(())
}

fn main() {}
