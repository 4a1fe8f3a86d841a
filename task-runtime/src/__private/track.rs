//! The helpers `track!` expansions call: signatures that make the compiler check mappers
//! and step conversions at the user's tokens, each with a message written for the user.

pub use crate::compose::track::step;

/// How a step's output becomes the next step's input when the track gives no mapper.
#[diagnostic::on_unimplemented(
    message = "the previous step's output `{Self}` does not convert into this step's input `{Next}`",
    label = "add a mapper: `= |prev, original| ...` returning `{Next}`",
    note = "a step without a mapper gets the previous step's output through `Into`: write a mapper, or implement `From<{Self}> for {Next}`"
)]
pub trait FlowsInto<Next> {
    fn flow_into(self) -> Next;
}

// `do_not_recommend`: a missing conversion is reported as this trait, with the message
// above, not as the `From` bound behind `Into`.
#[diagnostic::do_not_recommend]
impl<Prev: Into<Next>, Next> FlowsInto<Next> for Prev {
    fn flow_into(self) -> Next {
        self.into()
    }
}

/// Converts a step's output into the next step's input (no mapper given).
pub fn flow<Prev: FlowsInto<Next>, Next>(output: Prev) -> Next {
    output.flow_into()
}

/// How a track's declared input (`(input: TrackInput)`) becomes its first step's input when
/// that step has no mapper.
#[diagnostic::on_unimplemented(
    message = "the track's input `{Self}` does not convert into its first step's input `{Next}`",
    label = "add a mapper: `= |input| ...` returning `{Next}`",
    note = "a first step without a mapper gets the track's declared input through `Into`: write a mapper, or implement `From<{Self}> for {Next}`"
)]
pub trait IntoFirst<Next> {
    fn into_first(self) -> Next;
}

// `do_not_recommend`: reported with the message above, not as the `From` bound behind `Into`.
#[diagnostic::do_not_recommend]
impl<Input: Into<Next>, Next> IntoFirst<Next> for Input {
    fn into_first(self) -> Next {
        self.into()
    }
}

/// Converts the track's declared input into the first step's input (no mapper given).
pub fn first<Input: IntoFirst<Next>, Next>(input: Input) -> Next {
    input.into_first()
}

/// Gives a step mapper its signature, `(Prev, Original) -> Next`, before its body is
/// checked: the expansion passes the types the user declared on the closure (or, where
/// none are declared, the previous output and `&TrackInput`) and the next step's input.
pub fn mapper<Prev, Original, Next, F>(mapper: F) -> F
where
    F: FnOnce(Prev, Original) -> Next,
{
    mapper
}

/// A mapper's declared `prev` type must be the previous step's output.
#[diagnostic::on_unimplemented(
    message = "this mapper's `prev` is declared as `{Declared}`, but the previous step outputs `{Self}`",
    label = "expected `{Self}` here",
    note = "`prev` is the output of the step before this one; its type can also be left out: `|prev, original|`"
)]
pub trait PrevIs<Declared> {
    fn prev_is(self) -> Declared;
}

#[diagnostic::do_not_recommend]
impl<T> PrevIs<T> for T {
    fn prev_is(self) -> T {
        self
    }
}

/// Passes the previous output to a mapper whose `prev` has a declared type.
pub fn prev<Declared>(actual: impl PrevIs<Declared>) -> Declared {
    actual.prev_is()
}

/// A mapper's declared `original` type must be a reference to the track's input.
#[diagnostic::on_unimplemented(
    message = "this mapper's `original` is declared as `{Declared}`, but it receives `{Self}`",
    label = "expected `{Self}` here",
    note = "`original` is a reference to the track's input (its declared `(input: ..)`, else the first step's input); its type can also be left out: `|prev, original|`"
)]
pub trait OriginalIs<Declared> {
    fn original_is(self) -> Declared;
}

#[diagnostic::do_not_recommend]
impl<T> OriginalIs<T> for T {
    fn original_is(self) -> T {
        self
    }
}

/// Passes the track's input to a mapper whose `original` has a declared type.
pub fn original<Declared>(actual: impl OriginalIs<Declared>) -> Declared {
    actual.original_is()
}

/// A mapper's declared return type must be the input of its task (the step's or the
/// branch's; `orchestrator!` uses this check too).
#[diagnostic::on_unimplemented(
    message = "this mapper is declared to return `{Self}`, but its task takes `{Expected}`",
    label = "expected `{Expected}` here",
    note = "a mapper builds the input of the task it is written next to; its return type can also be left out"
)]
pub trait Returns<Expected> {
    fn returns(self) -> Expected;
}

#[diagnostic::do_not_recommend]
impl<T> Returns<T> for T {
    fn returns(self) -> T {
        self
    }
}

/// Passes a mapper's result on when its return type is declared.
pub fn returns<Declared: Returns<Expected>, Expected>(value: Declared) -> Expected {
    value.returns()
}

/// The track's input must be `Clone` when a step has a mapper.
#[diagnostic::on_unimplemented(
    message = "the track's input `{Self}` must implement `Clone`",
    label = "this step consumes the track's input: derive `Clone` on `{Self}`",
    note = "mappers receive `original`, a reference to the track's input, after the first step has consumed it, so the track keeps a clone",
    note = "a track that declares its input and maps it for the first step borrows it instead: `(input: {Self}) {{ FirstStep = |input| .. }}`"
)]
pub trait KeepOriginal {
    fn keep(&self) -> Self;
}

#[diagnostic::do_not_recommend]
impl<T: Clone> KeepOriginal for T {
    fn keep(&self) -> T {
        self.clone()
    }
}

/// The clone of the track's input that mappers see as `original`.
pub fn keep_original<T: KeepOriginal>(input: &T) -> T {
    input.keep()
}
