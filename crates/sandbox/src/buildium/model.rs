//! Leases and tenants as the emulator stores them, the changes the control API makes to them
//! (each returning the webhook events it causes), and their rendering as Buildium's
//! `LeaseMessage` and `TenantMessage`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::macros::format_description;
use time::{Date, Duration as TimeDuration, OffsetDateTime};

/// Status of a lease term (`LeaseStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaseStatus {
    /// The term is running.
    Active,
    /// The term has ended.
    Past,
    /// The term has not started.
    Future,
}

impl LeaseStatus {
    /// The status Buildium would show `today` for a term from `from` to `to`.
    #[must_use]
    pub fn on(today: Date, from: Date, to: Option<Date>) -> Self {
        if from > today {
            Self::Future
        } else if to.is_some_and(|to| to < today) {
            Self::Past
        } else {
            Self::Active
        }
    }

    /// The name on the wire, e.g. `Active`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Past => "Past",
            Self::Future => "Future",
        }
    }
}

/// Type of a lease (`LeaseType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LeaseType {
    /// No type.
    None,
    /// Fixed term (the default).
    #[default]
    Fixed,
    /// Fixed term rolling over to month-to-month.
    FixedWithRollover,
    /// At will, usually without an end date.
    AtWill,
}

impl LeaseType {
    /// The name on the wire, e.g. `Fixed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Fixed => "Fixed",
            Self::FixedWithRollover => "FixedWithRollover",
            Self::AtWill => "AtWill",
        }
    }
}

/// A tenant's status on a lease (`LeaseTenantMessage.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantStatus {
    /// No longer living there.
    MovedOut,
    /// Living there.
    Current,
    /// Moving in later.
    Future,
}

impl TenantStatus {
    /// The status of a tenant added to a lease with `status`.
    #[must_use]
    pub fn for_lease(status: LeaseStatus) -> Self {
        match status {
            LeaseStatus::Active => Self::Current,
            LeaseStatus::Past => Self::MovedOut,
            LeaseStatus::Future => Self::Future,
        }
    }
}

/// `YYYY-MM-DD` dates (Buildium's `format: date`), and their reading from control-API
/// bodies.
pub mod date_format {
    use serde::{Deserialize, Deserializer};
    use time::Date;
    use time::macros::format_description;

    /// Formats `date` as `YYYY-MM-DD`.
    #[must_use]
    pub fn text(date: Date) -> String {
        date.format(format_description!("[year]-[month]-[day]"))
            .unwrap_or_default()
    }

    /// Parses `YYYY-MM-DD`.
    ///
    /// # Errors
    /// The text is not a valid calendar date in that form.
    pub fn parse(text: &str) -> Result<Date, time::error::Parse> {
        Date::parse(text.trim(), format_description!("[year]-[month]-[day]"))
    }

    /// Serde `deserialize_with` for a [`Date`].
    ///
    /// # Errors
    /// The value is not a `YYYY-MM-DD` string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Date, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a date as YYYY-MM-DD")))
    }

    /// The same for an optional date (`null` or absent is `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer};
        use time::Date;

        /// Serde `deserialize_with` for an `Option<Date>`.
        ///
        /// # Errors
        /// The value is neither `null` nor a `YYYY-MM-DD` string.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Date>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(text) => super::parse(&text).map(Some).map_err(|_| {
                    serde::de::Error::custom(format!("{text:?} is not a date as YYYY-MM-DD"))
                }),
            }
        }
    }
}

/// Formats an instant as Buildium does in `EventDateTime`: UTC, 7 fractional digits, `Z`.
#[must_use]
pub fn datetime_text(at: OffsetDateTime) -> String {
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    ))
    .unwrap_or_default()
}

/// A person on a lease to create: a tenant, or a cosigner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NewTenant {
    /// An existing tenant to put on the lease instead of creating one (the name and email
    /// fields are then ignored). Only for [`super::BuildiumSandbox::add_tenant`].
    #[serde(default)]
    pub tenant_id: Option<i32>,
    /// First name.
    #[serde(default)]
    pub first_name: String,
    /// Last name.
    #[serde(default)]
    pub last_name: String,
    /// Email; tenants without one exist.
    #[serde(default)]
    pub email: Option<String>,
    /// Move-in date; defaults to the lease's start (for a tenant added to an existing lease,
    /// to today, as for a tenant added at a renewal).
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    pub move_in_date: Option<Date>,
    /// Status on the lease; defaults to what the lease's status implies (`Current` on an
    /// active lease, `Future` on a future one, `MovedOut` on a past one).
    #[serde(default)]
    pub status: Option<TenantStatus>,
}

impl NewTenant {
    /// A new tenant with a name and an email.
    #[must_use]
    pub fn new(first_name: &str, last_name: &str, email: &str) -> Self {
        Self {
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
            email: Some(email.to_owned()),
            ..Self::default()
        }
    }

    /// An existing tenant, to put on another lease.
    #[must_use]
    pub fn existing(tenant_id: i32) -> Self {
        Self {
            tenant_id: Some(tenant_id),
            ..Self::default()
        }
    }
}

/// A lease to create (body of `POST /_sandbox/leases`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NewLease {
    /// Rental property id.
    pub property_id: i32,
    /// Unit id.
    pub unit_id: i32,
    /// Unit number; defaults to the unit id.
    #[serde(default)]
    pub unit_number: Option<String>,
    /// Start of the term.
    #[serde(deserialize_with = "date_format::deserialize")]
    pub lease_from_date: Date,
    /// End of the term; none for an open-ended (at-will) lease.
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    pub lease_to_date: Option<Date>,
    /// Lease type; `Fixed` by default.
    #[serde(default)]
    pub lease_type: LeaseType,
    /// Status; by default what the dates imply today (UTC).
    #[serde(default)]
    pub lease_status: Option<LeaseStatus>,
    /// Move everyone out when the term ends.
    #[serde(default)]
    pub automatically_move_out_tenants: bool,
    /// Tenants, created with the lease.
    #[serde(default)]
    pub tenants: Vec<NewTenant>,
    /// Cosigners (guarantors, never tenants).
    #[serde(default)]
    pub cosigners: Vec<NewTenant>,
}

impl NewLease {
    /// A fixed-term lease of `unit_id` in `property_id`, without tenants.
    #[must_use]
    pub fn new(property_id: i32, unit_id: i32, from: Date, to: Option<Date>) -> Self {
        Self {
            property_id,
            unit_id,
            unit_number: None,
            lease_from_date: from,
            lease_to_date: to,
            lease_type: LeaseType::Fixed,
            lease_status: None,
            automatically_move_out_tenants: false,
            tenants: Vec::new(),
            cosigners: Vec::new(),
        }
    }

    /// The same lease with one more tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: NewTenant) -> Self {
        self.tenants.push(tenant);
        self
    }
}

/// Changes to a lease's own fields (body of `PATCH /_sandbox/leases/{id}`); absent fields
/// are kept. A renewal is a later `LeaseToDate` on the same lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LeaseUpdate {
    /// New rental property id.
    #[serde(default)]
    pub property_id: Option<i32>,
    /// New unit id.
    #[serde(default)]
    pub unit_id: Option<i32>,
    /// New unit number.
    #[serde(default)]
    pub unit_number: Option<String>,
    /// New start of the term.
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    pub lease_from_date: Option<Date>,
    /// New end of the term.
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    pub lease_to_date: Option<Date>,
    /// New lease type.
    #[serde(default)]
    pub lease_type: Option<LeaseType>,
    /// New status; when absent and the dates change, the status the new dates imply today
    /// (UTC). Going `Active` makes `Future` tenants `Current`; going `Past` moves every
    /// tenant out.
    #[serde(default)]
    pub lease_status: Option<LeaseStatus>,
    /// New `AutomaticallyMoveOutTenants`.
    #[serde(default)]
    pub automatically_move_out_tenants: Option<bool>,
}

/// A tenant's move-out (body of `POST /_sandbox/leases/{id}/moveouts`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct MoveOut {
    /// The tenant moving out (one on the lease).
    pub tenant_id: i32,
    /// When.
    #[serde(deserialize_with = "date_format::deserialize")]
    pub move_out_date: Date,
    /// When notice was given; defaults to today.
    #[serde(default, deserialize_with = "date_format::option::deserialize")]
    pub notice_given_date: Option<Date>,
    /// The tenant's status afterwards; by default `MovedOut` once the date is reached
    /// (today or earlier, UTC), else unchanged.
    #[serde(default)]
    pub tenant_status: Option<TenantStatus>,
}

/// Changes to a tenant (body of `PATCH /_sandbox/tenants/{id}`); absent fields are kept, an
/// empty `Email` removes the email.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TenantUpdate {
    /// New first name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// New last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// New email (`""` removes it).
    #[serde(default)]
    pub email: Option<String>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// No lease has this id.
    #[error("lease {0} not found")]
    LeaseNotFound(i32),
    /// No tenant has this id.
    #[error("tenant {0} not found")]
    TenantNotFound(i32),
    /// The tenant is not on this lease.
    #[error("tenant {tenant_id} is not on lease {lease_id}")]
    NotOnLease {
        /// The lease.
        lease_id: i32,
        /// The tenant.
        tenant_id: i32,
    },
    /// The tenant is already on this lease.
    #[error("tenant {tenant_id} is already on lease {lease_id}")]
    AlreadyOnLease {
        /// The lease.
        lease_id: i32,
        /// The tenant.
        tenant_id: i32,
    },
    /// A value is unusable (e.g. a term ending before it starts, a nameless tenant).
    #[error("{0}")]
    Invalid(String),
}

/// The webhook events of Buildium's lease family the emulator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventName {
    /// `Lease.Created` (`LeaseId`).
    #[serde(rename = "Lease.Created")]
    LeaseCreated,
    /// `Lease.Updated` (`LeaseId`).
    #[serde(rename = "Lease.Updated")]
    LeaseUpdated,
    /// `Lease.Deleted` (`LeaseId`).
    #[serde(rename = "Lease.Deleted")]
    LeaseDeleted,
    /// `Lease.MoveOut.Created` (`LeaseId`, `TenantId`).
    #[serde(rename = "Lease.MoveOut.Created")]
    MoveOutCreated,
    /// `LeaseTenant.Created` (`TenantId` only).
    #[serde(rename = "LeaseTenant.Created")]
    TenantCreated,
    /// `LeaseTenant.Updated` (`TenantId` only).
    #[serde(rename = "LeaseTenant.Updated")]
    TenantUpdated,
    /// `LeaseTenant.Deleted` (`TenantId` only).
    #[serde(rename = "LeaseTenant.Deleted")]
    TenantDeleted,
}

impl EventName {
    /// The `EventName` on the wire, e.g. `Lease.Updated`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaseCreated => "Lease.Created",
            Self::LeaseUpdated => "Lease.Updated",
            Self::LeaseDeleted => "Lease.Deleted",
            Self::MoveOutCreated => "Lease.MoveOut.Created",
            Self::TenantCreated => "LeaseTenant.Created",
            Self::TenantUpdated => "LeaseTenant.Updated",
            Self::TenantDeleted => "LeaseTenant.Deleted",
        }
    }
}

/// One event a change causes, before it becomes a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Occurred {
    pub(crate) name: EventName,
    pub(crate) at: OffsetDateTime,
    pub(crate) lease_id: Option<i32>,
    pub(crate) tenant_id: Option<i32>,
}

#[derive(Clone, Debug)]
struct Person {
    id: i32,
    first_name: String,
    last_name: String,
    email: Option<String>,
    created: OffsetDateTime,
}

#[derive(Clone, Debug)]
struct OnLease {
    tenant_id: i32,
    status: TenantStatus,
    move_in: Option<Date>,
}

#[derive(Clone, Debug)]
struct MoveOutEntry {
    tenant_id: i32,
    move_out: Date,
    notice_given: Option<Date>,
}

#[derive(Clone, Debug)]
struct Lease {
    id: i32,
    property_id: i32,
    unit_id: i32,
    unit_number: String,
    from: Date,
    to: Option<Date>,
    lease_type: LeaseType,
    status: LeaseStatus,
    automatically_move_out_tenants: bool,
    /// Every tenant ever on the lease, in the order they joined.
    tenants: Vec<OnLease>,
    cosigners: Vec<Person>,
    move_outs: Vec<MoveOutEntry>,
    created: OffsetDateTime,
    last_updated: OffsetDateTime,
}

/// Leases, tenants and the clock that stamps their changes.
#[derive(Debug)]
pub(crate) struct Store {
    leases: BTreeMap<i32, Lease>,
    tenants: BTreeMap<i32, Person>,
    next_lease_id: i32,
    next_tenant_id: i32,
    next_cosigner_id: i32,
    last_change: OffsetDateTime,
}

/// First ids given out: distinct ranges, so that a client mixing up a lease id and a tenant
/// id gets a 404 instead of another record.
const FIRST_LEASE_ID: i32 = 1001;
const FIRST_TENANT_ID: i32 = 20_001;
const FIRST_COSIGNER_ID: i32 = 90_001;

impl Default for Store {
    fn default() -> Self {
        Self {
            leases: BTreeMap::new(),
            tenants: BTreeMap::new(),
            next_lease_id: FIRST_LEASE_ID,
            next_tenant_id: FIRST_TENANT_ID,
            next_cosigner_id: FIRST_COSIGNER_ID,
            last_change: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

fn take_id(next: &mut i32) -> i32 {
    let id = *next;
    *next = next.saturating_add(1);
    id
}

fn clean(text: &str) -> String {
    text.trim().to_owned()
}

fn clean_email(email: Option<&str>) -> Option<String> {
    email
        .map(str::trim)
        .filter(|email| !email.is_empty())
        .map(str::to_owned)
}

fn check_term(from: Date, to: Option<Date>) -> Result<(), ChangeError> {
    match to {
        Some(to) if to < from => Err(ChangeError::Invalid(format!(
            "LeaseToDate {} is before LeaseFromDate {}",
            date_format::text(to),
            date_format::text(from)
        ))),
        _ => Ok(()),
    }
}

impl Store {
    /// The instant of a change: now, in Buildium's 100 ns resolution, and strictly after the
    /// previous change's.
    fn tick(&mut self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        let now = now
            .replace_nanosecond(now.nanosecond() / 100 * 100)
            .unwrap_or(now);
        let at = if now > self.last_change {
            now
        } else {
            self.last_change + TimeDuration::nanoseconds(100)
        };
        self.last_change = at;
        at
    }

    fn lease_mut(&mut self, lease_id: i32) -> Result<&mut Lease, ChangeError> {
        self.leases
            .get_mut(&lease_id)
            .ok_or(ChangeError::LeaseNotFound(lease_id))
    }

    fn new_person(
        next: &mut i32,
        person: &NewTenant,
        at: OffsetDateTime,
    ) -> Result<Person, ChangeError> {
        let (first_name, last_name) = (clean(&person.first_name), clean(&person.last_name));
        if first_name.is_empty() && last_name.is_empty() {
            return Err(ChangeError::Invalid(
                "a tenant or cosigner needs a FirstName or a LastName".into(),
            ));
        }
        Ok(Person {
            id: take_id(next),
            first_name,
            last_name,
            email: clean_email(person.email.as_deref()),
            created: at,
        })
    }

    /// Creates a lease with its tenants and cosigners: `Lease.Created`, then
    /// `LeaseTenant.Created` for each new tenant.
    pub(crate) fn create_lease(
        &mut self,
        lease: &NewLease,
    ) -> Result<(i32, Vec<Occurred>), ChangeError> {
        check_term(lease.lease_from_date, lease.lease_to_date)?;
        if lease
            .tenants
            .iter()
            .any(|tenant| tenant.tenant_id.is_some())
        {
            return Err(ChangeError::Invalid(
                "a new lease creates its tenants: use add_tenant for an existing one".into(),
            ));
        }
        let status = lease.lease_status.unwrap_or_else(|| {
            LeaseStatus::on(today(), lease.lease_from_date, lease.lease_to_date)
        });
        // Validate every person before taking ids or the clock.
        let mut next_tenant = self.next_tenant_id;
        let mut next_cosigner = self.next_cosigner_id;
        let at = self.last_change;
        let tenants = lease
            .tenants
            .iter()
            .map(|tenant| Self::new_person(&mut next_tenant, tenant, at))
            .collect::<Result<Vec<_>, _>>()?;
        let cosigners = lease
            .cosigners
            .iter()
            .map(|cosigner| Self::new_person(&mut next_cosigner, cosigner, at))
            .collect::<Result<Vec<_>, _>>()?;
        self.next_tenant_id = next_tenant;
        self.next_cosigner_id = next_cosigner;

        let at = self.tick();
        let id = take_id(&mut self.next_lease_id);
        let mut events = vec![Occurred {
            name: EventName::LeaseCreated,
            at,
            lease_id: Some(id),
            tenant_id: None,
        }];
        let mut on_lease = Vec::new();
        for (mut person, wanted) in tenants.into_iter().zip(&lease.tenants) {
            person.created = at;
            on_lease.push(OnLease {
                tenant_id: person.id,
                status: wanted
                    .status
                    .unwrap_or_else(|| TenantStatus::for_lease(status)),
                move_in: Some(wanted.move_in_date.unwrap_or(lease.lease_from_date)),
            });
            events.push(Occurred {
                name: EventName::TenantCreated,
                at,
                lease_id: None,
                tenant_id: Some(person.id),
            });
            self.tenants.insert(person.id, person);
        }
        let cosigners = cosigners
            .into_iter()
            .map(|mut person| {
                person.created = at;
                person
            })
            .collect();
        self.leases.insert(
            id,
            Lease {
                id,
                property_id: lease.property_id,
                unit_id: lease.unit_id,
                unit_number: lease
                    .unit_number
                    .as_deref()
                    .map_or_else(|| lease.unit_id.to_string(), clean),
                from: lease.lease_from_date,
                to: lease.lease_to_date,
                lease_type: lease.lease_type,
                status,
                automatically_move_out_tenants: lease.automatically_move_out_tenants,
                tenants: on_lease,
                cosigners,
                move_outs: Vec::new(),
                created: at,
                last_updated: at,
            },
        );
        Ok((id, events))
    }

    /// Changes a lease's own fields: `Lease.Updated`.
    pub(crate) fn update_lease(
        &mut self,
        lease_id: i32,
        update: &LeaseUpdate,
    ) -> Result<Vec<Occurred>, ChangeError> {
        let lease = self.lease_mut(lease_id)?;
        let from = update.lease_from_date.unwrap_or(lease.from);
        let to = update.lease_to_date.or(lease.to);
        check_term(from, to)?;
        // A new term (e.g. a renewal) brings the status its dates imply, unless one is given.
        let dates_changed = update.lease_from_date.is_some() || update.lease_to_date.is_some();
        let status = update
            .lease_status
            .or_else(|| dates_changed.then(|| LeaseStatus::on(today(), from, to)));
        let at = self.tick();
        let lease = self.lease_mut(lease_id)?;
        lease.from = from;
        lease.to = to;
        if let Some(property_id) = update.property_id {
            lease.property_id = property_id;
        }
        if let Some(unit_id) = update.unit_id {
            lease.unit_id = unit_id;
        }
        if let Some(unit_number) = &update.unit_number {
            lease.unit_number = clean(unit_number);
        }
        if let Some(lease_type) = update.lease_type {
            lease.lease_type = lease_type;
        }
        if let Some(automatic) = update.automatically_move_out_tenants {
            lease.automatically_move_out_tenants = automatic;
        }
        if let Some(status) = status.filter(|status| *status != lease.status) {
            lease.status = status;
            for tenant in &mut lease.tenants {
                tenant.status = match (status, tenant.status) {
                    (LeaseStatus::Active, TenantStatus::Future) => TenantStatus::Current,
                    (LeaseStatus::Past, _) => TenantStatus::MovedOut,
                    (_, unchanged) => unchanged,
                };
            }
        }
        lease.last_updated = at;
        Ok(vec![Occurred {
            name: EventName::LeaseUpdated,
            at,
            lease_id: Some(lease_id),
            tenant_id: None,
        }])
    }

    /// Records a tenant's move-out in `MoveOutData` and, once the date is reached, moves the
    /// tenant out: `Lease.MoveOut.Created`, then `Lease.Updated`.
    pub(crate) fn move_out(
        &mut self,
        lease_id: i32,
        move_out: &MoveOut,
    ) -> Result<Vec<Occurred>, ChangeError> {
        let lease = self.lease_mut(lease_id)?;
        let tenant_id = move_out.tenant_id;
        if !lease.tenants.iter().any(|t| t.tenant_id == tenant_id) {
            return Err(ChangeError::NotOnLease {
                lease_id,
                tenant_id,
            });
        }
        let at = self.tick();
        let lease = self.lease_mut(lease_id)?;
        lease.move_outs.retain(|entry| entry.tenant_id != tenant_id);
        lease.move_outs.push(MoveOutEntry {
            tenant_id,
            move_out: move_out.move_out_date,
            notice_given: Some(move_out.notice_given_date.unwrap_or_else(today)),
        });
        let status = move_out
            .tenant_status
            .or_else(|| (move_out.move_out_date <= today()).then_some(TenantStatus::MovedOut));
        if let Some(status) = status {
            for tenant in &mut lease.tenants {
                if tenant.tenant_id == tenant_id {
                    tenant.status = status;
                }
            }
        }
        lease.last_updated = at;
        Ok(vec![
            Occurred {
                name: EventName::MoveOutCreated,
                at,
                lease_id: Some(lease_id),
                tenant_id: Some(tenant_id),
            },
            Occurred {
                name: EventName::LeaseUpdated,
                at,
                lease_id: Some(lease_id),
                tenant_id: None,
            },
        ])
    }

    /// Puts a tenant on a lease, a new one (`LeaseTenant.Created`) or an existing one
    /// (`LeaseTenant.Updated`), then `Lease.Updated`. Returns the tenant id.
    pub(crate) fn add_tenant(
        &mut self,
        lease_id: i32,
        tenant: &NewTenant,
    ) -> Result<(i32, Vec<Occurred>), ChangeError> {
        let lease = self.lease_mut(lease_id)?;
        let lease_status = lease.status;
        if let Some(tenant_id) = tenant.tenant_id {
            if lease.tenants.iter().any(|t| t.tenant_id == tenant_id) {
                return Err(ChangeError::AlreadyOnLease {
                    lease_id,
                    tenant_id,
                });
            }
            if !self.tenants.contains_key(&tenant_id) {
                return Err(ChangeError::TenantNotFound(tenant_id));
            }
        }
        let mut next_tenant = self.next_tenant_id;
        let created = match tenant.tenant_id {
            Some(_) => None,
            None => Some(Self::new_person(
                &mut next_tenant,
                tenant,
                self.last_change,
            )?),
        };
        self.next_tenant_id = next_tenant;
        let at = self.tick();
        let (tenant_id, name) = match created {
            Some(mut person) => {
                person.created = at;
                let id = person.id;
                self.tenants.insert(id, person);
                (id, EventName::TenantCreated)
            }
            None => (
                tenant.tenant_id.unwrap_or_default(),
                EventName::TenantUpdated,
            ),
        };
        let lease = self.lease_mut(lease_id)?;
        lease.tenants.push(OnLease {
            tenant_id,
            status: tenant
                .status
                .unwrap_or_else(|| TenantStatus::for_lease(lease_status)),
            move_in: Some(tenant.move_in_date.unwrap_or_else(today)),
        });
        lease.last_updated = at;
        Ok((
            tenant_id,
            vec![
                Occurred {
                    name,
                    at,
                    lease_id: None,
                    tenant_id: Some(tenant_id),
                },
                Occurred {
                    name: EventName::LeaseUpdated,
                    at,
                    lease_id: Some(lease_id),
                    tenant_id: None,
                },
            ],
        ))
    }

    /// Takes a tenant off a lease (as if added by mistake): `LeaseTenant.Deleted` when the
    /// tenant is on no other lease (its record goes too), else `LeaseTenant.Updated`; then
    /// `Lease.Updated`.
    pub(crate) fn remove_tenant(
        &mut self,
        lease_id: i32,
        tenant_id: i32,
    ) -> Result<Vec<Occurred>, ChangeError> {
        let lease = self.lease_mut(lease_id)?;
        if !lease.tenants.iter().any(|t| t.tenant_id == tenant_id) {
            return Err(ChangeError::NotOnLease {
                lease_id,
                tenant_id,
            });
        }
        let at = self.tick();
        let lease = self.lease_mut(lease_id)?;
        lease.tenants.retain(|t| t.tenant_id != tenant_id);
        lease.move_outs.retain(|entry| entry.tenant_id != tenant_id);
        lease.last_updated = at;
        let elsewhere = self
            .leases
            .values()
            .any(|lease| lease.tenants.iter().any(|t| t.tenant_id == tenant_id));
        let name = if elsewhere {
            EventName::TenantUpdated
        } else {
            self.tenants.remove(&tenant_id);
            EventName::TenantDeleted
        };
        Ok(vec![
            Occurred {
                name,
                at,
                lease_id: None,
                tenant_id: Some(tenant_id),
            },
            Occurred {
                name: EventName::LeaseUpdated,
                at,
                lease_id: Some(lease_id),
                tenant_id: None,
            },
        ])
    }

    /// Changes a tenant's name or email: `LeaseTenant.Updated`. The tenant's leases get a new
    /// `LastUpdatedDateTime` (their `CurrentTenants` changed) but no `Lease.Updated`.
    pub(crate) fn update_tenant(
        &mut self,
        tenant_id: i32,
        update: &TenantUpdate,
    ) -> Result<Vec<Occurred>, ChangeError> {
        let tenant = self
            .tenants
            .get(&tenant_id)
            .ok_or(ChangeError::TenantNotFound(tenant_id))?;
        let first_name = update
            .first_name
            .as_deref()
            .map_or_else(|| tenant.first_name.clone(), clean);
        let last_name = update
            .last_name
            .as_deref()
            .map_or_else(|| tenant.last_name.clone(), clean);
        if first_name.is_empty() && last_name.is_empty() {
            return Err(ChangeError::Invalid(
                "a tenant needs a FirstName or a LastName".into(),
            ));
        }
        let email = match &update.email {
            Some(email) => clean_email(Some(email)),
            None => tenant.email.clone(),
        };
        let at = self.tick();
        if let Some(tenant) = self.tenants.get_mut(&tenant_id) {
            tenant.first_name = first_name;
            tenant.last_name = last_name;
            tenant.email = email;
        }
        for lease in self.leases.values_mut() {
            if lease.tenants.iter().any(|t| t.tenant_id == tenant_id) {
                lease.last_updated = at;
            }
        }
        Ok(vec![Occurred {
            name: EventName::TenantUpdated,
            at,
            lease_id: None,
            tenant_id: Some(tenant_id),
        }])
    }

    /// Deletes a lease: `Lease.Deleted`. Its tenants stay (without this lease).
    pub(crate) fn delete_lease(&mut self, lease_id: i32) -> Result<Vec<Occurred>, ChangeError> {
        if !self.leases.contains_key(&lease_id) {
            return Err(ChangeError::LeaseNotFound(lease_id));
        }
        let at = self.tick();
        self.leases.remove(&lease_id);
        Ok(vec![Occurred {
            name: EventName::LeaseDeleted,
            at,
            lease_id: Some(lease_id),
            tenant_id: None,
        }])
    }

    // -----------------------------------------------------------------------
    // Reads

    /// Lease ids, ascending.
    pub(crate) fn lease_ids(&self) -> impl Iterator<Item = i32> + '_ {
        self.leases.keys().copied()
    }

    /// What the list filters and sorts on.
    pub(crate) fn lease_facts(&self, lease_id: i32) -> Option<LeaseFacts> {
        self.leases.get(&lease_id).map(|lease| LeaseFacts {
            id: lease.id,
            property_id: lease.property_id,
            unit_id: lease.unit_id,
            status: lease.status,
            lease_type: lease.lease_type,
            from: lease.from,
            to: lease.to,
            created: lease.created,
            last_updated: lease.last_updated,
        })
    }

    /// `LeaseMessage` of a lease.
    pub(crate) fn lease_message(&self, lease_id: i32) -> Option<Value> {
        let lease = self.leases.get(&lease_id)?;
        let current: Vec<Value> = lease
            .tenants
            .iter()
            .filter(|t| t.status != TenantStatus::MovedOut)
            .filter_map(|t| self.tenants.get(&t.tenant_id))
            .map(|tenant| tenant_message(tenant, None))
            .collect();
        let tenants: Vec<Value> = lease
            .tenants
            .iter()
            .map(|t| {
                json!({
                    "Id": t.tenant_id,
                    "Status": t.status,
                    "MoveInDate": t.move_in.map(date_format::text),
                })
            })
            .collect();
        let move_outs: Vec<Value> = lease
            .move_outs
            .iter()
            .map(|entry| {
                json!({
                    "TenantId": entry.tenant_id,
                    "MoveOutDate": date_format::text(entry.move_out),
                    "NoticeGivenDate": entry.notice_given.map(date_format::text),
                })
            })
            .collect();
        let cosigners: Vec<Value> = lease.cosigners.iter().map(cosigner_message).collect();
        let term_type = match lease.lease_type {
            LeaseType::AtWill => "MonthToMonth",
            _ => "Standard",
        };
        Some(json!({
            "Id": lease.id,
            "PropertyId": lease.property_id,
            "UnitId": lease.unit_id,
            "UnitNumber": lease.unit_number,
            "LeaseFromDate": date_format::text(lease.from),
            "LeaseToDate": lease.to.map(date_format::text),
            "LeaseType": lease.lease_type,
            "LeaseStatus": lease.status,
            "IsEvictionPending": false,
            "TermType": term_type,
            "RenewalOfferStatus": null,
            "CurrentTenants": current,
            "CurrentNumberOfOccupants": current.len(),
            "AccountDetails": { "SecurityDeposit": null, "Rent": null },
            "Cosigners": cosigners,
            "AutomaticallyMoveOutTenants": lease.automatically_move_out_tenants,
            "CreatedDateTime": datetime_text(lease.created),
            "LastUpdatedDateTime": datetime_text(lease.last_updated),
            "MoveOutData": move_outs,
            "PaymentDueDay": 1,
            "Tenants": tenants,
        }))
    }

    /// `TenantMessage` of a tenant, with its `Leases` (every lease it is on, any status).
    pub(crate) fn tenant_message(&self, tenant_id: i32) -> Option<Value> {
        let tenant = self.tenants.get(&tenant_id)?;
        let leases: Vec<Value> = self
            .leases
            .values()
            .filter(|lease| lease.tenants.iter().any(|t| t.tenant_id == tenant_id))
            .filter_map(|lease| self.lease_message(lease.id))
            .collect();
        Some(tenant_message(tenant, Some(leases)))
    }
}

/// What `GET /v1/leases` filters and sorts on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseFacts {
    pub(crate) id: i32,
    pub(crate) property_id: i32,
    pub(crate) unit_id: i32,
    pub(crate) status: LeaseStatus,
    pub(crate) lease_type: LeaseType,
    pub(crate) from: Date,
    pub(crate) to: Option<Date>,
    pub(crate) created: OffsetDateTime,
    pub(crate) last_updated: OffsetDateTime,
}

/// `TenantMessage`; `Leases` only where Buildium lists them (the tenant read).
fn tenant_message(tenant: &Person, leases: Option<Vec<Value>>) -> Value {
    let mut message = json!({
        "Id": tenant.id,
        "FirstName": tenant.first_name,
        "LastName": tenant.last_name,
        "Email": tenant.email,
        "AlternateEmail": null,
        "PhoneNumbers": [],
        "CreatedDateTime": datetime_text(tenant.created),
        "EmergencyContact": null,
        "DateOfBirth": null,
        "SMSOptInStatus": null,
        "Address": null,
        "AlternateAddress": null,
        "MailingPreference": "PrimaryAddress",
        "Comment": null,
        "TaxId": null,
    });
    if let (Some(leases), Some(fields)) = (leases, message.as_object_mut()) {
        fields.insert("Leases".into(), Value::Array(leases));
    }
    message
}

/// `CosignerMessage`.
fn cosigner_message(cosigner: &Person) -> Value {
    json!({
        "Id": cosigner.id,
        "FirstName": cosigner.first_name,
        "LastName": cosigner.last_name,
        "Email": cosigner.email,
        "AlternateEmail": null,
        "PhoneNumbers": [],
        "CreatedDateTime": datetime_text(cosigner.created),
        "Address": null,
        "AlternateAddress": null,
        "MailingPreference": "PrimaryAddress",
    })
}
