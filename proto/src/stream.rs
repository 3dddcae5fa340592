//! The first frame on every stream after the control stream says what the
//! stream carries, so new kinds (images, ...) can be added without guessing.

use bincode::{Decode, Encode};

/// What a freshly opened stream carries.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// The long-lived request/reply stream (client-opened, first stream).
    Control,
    /// A batch of text messages from a client; replies are [`crate::envelope::SendAck`]s.
    Text,
    /// A batch of queued deliveries from the node; the reply is a [`crate::envelope::DeliveryAck`].
    Delivery,
    /// An image upload: [`crate::image::ImageOffer`], then ciphertext bytes.
    ImageUpload,
    /// An image download: [`crate::image::ImageFetch`], then ciphertext bytes back.
    ImageFetch,
}
