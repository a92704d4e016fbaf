use serde::{Deserialize, Serialize};
use stead::{Context, durable_object};

#[derive(Debug, Serialize, Deserialize)]
pub enum WithdrawError {
    Insufficient { balance: u64 },
}

pub struct Wallet {
    balance: u64,
}

#[durable_object]
impl Wallet {
    pub async fn new(_ctx: Context) -> Self {
        Wallet { balance: 0 }
    }

    pub async fn deposit(&mut self, amount: u64) -> u64 {
        self.balance += amount;
        self.balance
    }

    pub async fn withdraw(&mut self, amount: u64) -> Result<u64, WithdrawError> {
        if amount > self.balance {
            return Err(WithdrawError::Insufficient { balance: self.balance });
        }
        self.balance -= amount;
        Ok(self.balance)
    }
}

// The stub returns `stead::Result<Result<u64, WithdrawError>>`, as in tarpc.
async fn use_stub(stub: WalletStub) -> stead::Result<Result<u64, WithdrawError>> {
    let pending = stub.withdraw(3);
    fn is_static_send<F: std::future::Future + Send + 'static>(f: F) -> F {
        f
    }
    is_static_send(pending).await
}

// The future borrows nothing: it outlives the stub it came from.
fn detached(stub: &WalletStub) -> impl std::future::Future<Output = stead::Result<u64>> + Send + 'static {
    let local = stub.clone();
    local.deposit(1)
}

fn main() {
    let _ = (use_stub, detached);
}
