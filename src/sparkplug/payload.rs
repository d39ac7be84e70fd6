//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`), written by hand from the
//! field numbers of the Sparkplug 3.0 specification (no `.proto` vendored, no protoc at
//! build time). Only the parts vigil sends or reads are modelled; fields it does not know
//! (metadata, properties, data sets, templates, extensions) are skipped when decoding.

use prost::Message;

/// Sparkplug B data type codes (`DataType` in the specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
}

impl DataType {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// `Payload`: timestamp = 1, metrics = 2, seq = 3, uuid = 4, body = 5.
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch (UTC).
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0..=255; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`: name = 1, alias = 2, timestamp = 3, datatype = 4, is_historical = 5,
/// is_transient = 6, is_null = 7, then the `value` oneof (int 10, long 11, float 12,
/// double 13, boolean 14, string 15, bytes 16; data set 17, template 18 and extension 19
/// are not modelled).
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// The `value` oneof of a metric.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement in the low bits), UInt8/16/32.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String, Text.
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

impl Metric {
    /// A metric with a name (births, NDEATH) and/or an alias, its data type and value
    /// (`None`: `is_null` set, the data type still given).
    pub fn new(
        name: Option<&str>,
        alias: Option<u64>,
        datatype: DataType,
        timestamp: u64,
        value: Option<MetricValue>,
    ) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias,
            timestamp: Some(timestamp),
            datatype: Some(datatype.code()),
            is_historical: None,
            is_transient: None,
            is_null: value.is_none().then_some(true),
            value,
        }
    }

    /// The value as a finite `f64`, whatever numeric field carries it (`Float` metrics
    /// written from a host may arrive as float, double or an integer).
    pub fn as_f64(&self) -> Option<f64> {
        let v = match self.value.as_ref()? {
            MetricValue::FloatValue(f) => f64::from(*f),
            MetricValue::DoubleValue(d) => *d,
            MetricValue::IntValue(i) => f64::from(*i as i32),
            MetricValue::LongValue(l) => *l as i64 as f64,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_ref()? {
            MetricValue::BooleanValue(b) => Some(*b),
            _ => None,
        }
    }
}

impl Payload {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
        Payload::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_and_wire_types_follow_the_specification() {
        let p = Payload {
            timestamp: Some(1),
            metrics: vec![Metric::new(
                Some("a"),
                Some(7),
                DataType::Boolean,
                2,
                Some(MetricValue::BooleanValue(true)),
            )],
            seq: Some(3),
            uuid: None,
            body: None,
        };
        let b = p.to_bytes();
        // timestamp: field 1 varint; metrics: field 2 length-delimited; seq: field 3 varint.
        assert_eq!(&b[..2], &[0x08, 0x01]);
        assert_eq!(b[2], 0x12);
        let m = &b[4..4 + b[3] as usize];
        // name (1, LEN) "a", alias (2) 7, timestamp (3) 2, datatype (4) 11, boolean (14) 1.
        assert_eq!(
            m,
            &[0x0a, 0x01, b'a', 0x10, 7, 0x18, 2, 0x20, 11, 0x70, 1][..]
        );
        assert_eq!(&b[4 + m.len()..], &[0x18, 3]);
        assert_eq!(Payload::from_bytes(&b).unwrap(), p);
    }

    #[test]
    fn a_null_metric_keeps_its_datatype() {
        let m = Metric::new(Some("x"), None, DataType::Float, 5, None);
        assert_eq!(m.is_null, Some(true));
        assert_eq!(m.datatype, Some(9));
        assert!(m.value.is_none());
    }

    #[test]
    fn numeric_values_read_as_f64() {
        let m = |v| Metric::new(None, Some(1), DataType::Float, 0, Some(v));
        assert_eq!(m(MetricValue::FloatValue(1.5)).as_f64(), Some(1.5));
        assert_eq!(m(MetricValue::DoubleValue(-2.0)).as_f64(), Some(-2.0));
        assert_eq!(
            m(MetricValue::IntValue((-3i32) as u32)).as_f64(),
            Some(-3.0)
        );
        assert_eq!(m(MetricValue::FloatValue(f32::NAN)).as_f64(), None);
        assert_eq!(m(MetricValue::BooleanValue(true)).as_f64(), None);
    }
}
