//! The helpers `orchestrator!` expansions call: result collection and the signatures that
//! make the compiler check branch mappers and `each(..)` items at the user's tokens. The
//! one-parameter mapper helpers also serve a track's first-step mapper, `|input|`.

use crate::compose::orchestrator::Outcome;
use crate::error::TaskError;

/// Collects item results under fail-fast: all outputs, or the first error.
pub fn all<O>(results: Vec<Result<O, TaskError>>) -> Result<Vec<O>, TaskError> {
    results.into_iter().collect()
}

/// Collects item results under settle: one outcome per item.
pub fn settled<O>(results: Vec<Result<O, TaskError>>) -> Vec<Outcome<O>> {
    results.into_iter().map(Outcome::from).collect()
}

/// Gives a one-parameter mapper its signature, `(Input) -> Next`, before its body is
/// checked: the expansion passes the types declared on the closure (or `&Input`, a reference
/// to the declared `(input: ..)`, and the task's input where none are declared). Used for
/// branch mappers and for a track's first-step mapper.
pub fn mapper<Input, Next, F>(mapper: F) -> F
where
    F: FnOnce(Input) -> Next,
{
    mapper
}

/// A one-parameter mapper's declared `input` type must be a reference to the input the
/// orchestrator (or track) declares.
#[diagnostic::on_unimplemented(
    message = "this mapper's `input` is declared as `{Declared}`, but it receives `{Self}`",
    label = "expected `{Self}` here",
    note = "`input` is a reference to the input declared after the id, `(input: ..)`; its type can also be left out: `|input|`"
)]
pub trait InputIs<Declared> {
    fn input_is(self) -> Declared;
}

#[diagnostic::do_not_recommend]
impl<T> InputIs<T> for T {
    fn input_is(self) -> T {
        self
    }
}

/// Passes the declared input to a mapper whose `input` has a declared type.
pub fn input<Declared>(actual: impl InputIs<Declared>) -> Declared {
    actual.input_is()
}

/// How the orchestrator's input becomes a branch's input when the branch has no mapper.
#[diagnostic::on_unimplemented(
    message = "the orchestrator's input `{Self}` does not convert into this branch's input `{Next}`",
    label = "add a mapper: `= |input| ...` returning `{Next}`",
    note = "a branch without a mapper gets a clone of the orchestrator's input through `Into`: write a mapper, or implement `From<{Self}> for {Next}`"
)]
pub trait BranchInput<Next> {
    fn branch_input(self) -> Next;
}

// `do_not_recommend`: a missing conversion is reported with the message above, not as the
// `From` bound behind `Into`.
#[diagnostic::do_not_recommend]
impl<Input: Into<Next>, Next> BranchInput<Next> for Input {
    fn branch_input(self) -> Next {
        self.into()
    }
}

/// The orchestrator input, cloned into a branch that has no mapper.
pub fn cloned<Input: Clone + BranchInput<Next>, Next>(input: &Input) -> Next {
    input.clone().branch_input()
}

/// Gives an `each(|input| ..)` closure its parameter type; what it returns is checked by
/// [`each_items`].
pub fn items<Input, F, Items>(items: F) -> F
where
    F: FnOnce(Input) -> Items,
{
    items
}

/// What `each(..)` may give: a collection or iterator of the branch task's inputs.
#[diagnostic::on_unimplemented(
    message = "`each(..)` must give the inputs of this branch's task, `{Item}`, but it gives `{Self}`",
    label = "expected a collection or iterator of `{Item}`",
    note = "map each item to `{Item}`, e.g. `each(|input| input.items.iter().map(|item| {Item} {{ .. }}).collect::<Vec<_>>())`"
)]
pub trait EachOf<Item> {
    fn each_of(self) -> Vec<Item>;
}

// `do_not_recommend`: wrong items are reported with the message above, not as a mismatch
// of `IntoIterator::Item`.
#[diagnostic::do_not_recommend]
impl<I, Item> EachOf<Item> for I
where
    I: IntoIterator<Item = Item>,
{
    fn each_of(self) -> Vec<Item> {
        self.into_iter().collect()
    }
}

/// The items of an `each(..)` branch, checked to be the branch task's inputs. A `Vec`, the
/// form `Branches::each` collects them into anyway.
pub fn each_items<Item>(items: impl EachOf<Item>) -> Vec<Item> {
    items.each_of()
}
