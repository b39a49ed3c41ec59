//! The virtio-mmio register layout (virtio 1.x, section 4.2.2), shared by
//! kvmkit's device side and its test guest's driver.

/// MagicValue: "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version of the modern (virtio 1.x) transport.
pub const VERSION_MODERN: u32 = 2;

/// MagicValue register.
pub const REG_MAGIC: u64 = 0x000;
/// Version register.
pub const REG_VERSION: u64 = 0x004;
/// DeviceID register.
pub const REG_DEVICE_ID: u64 = 0x008;
/// VendorID register.
pub const REG_VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures register (32 bits selected by DeviceFeaturesSel).
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel register.
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures register (32 bits selected by DriverFeaturesSel).
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel register.
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel register.
pub const REG_QUEUE_SEL: u64 = 0x030;
/// QueueNumMax register.
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum register.
pub const REG_QUEUE_NUM: u64 = 0x038;
/// QueueReady register.
pub const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify register.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus register.
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK register.
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// Status register.
pub const REG_STATUS: u64 = 0x070;
/// QueueDescLow register.
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh register.
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (available ring) register.
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDriverHigh register.
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow (used ring) register.
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// QueueDeviceHigh register.
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// ConfigGeneration register.
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration space.
pub const REG_CONFIG: u64 = 0x100;

/// Device status: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 0x40;
/// Device status: the driver gave up.
pub const STATUS_FAILED: u32 = 0x80;
