"""A wallet site: where vouchers are sold, with its own currency, time zone and day cut-off."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from canonical._base import CanonicalModel, CountryCode, SiteCode
from canonical.money import CurrencyCode, minor_unit


class Site(CanonicalModel):
    code: SiteCode
    name: str = Field(min_length=1, max_length=200)
    country: CountryCode
    currency: CurrencyCode
    timezone: str
    day_cutoff: time = time(0, 0)
    """Local time at which the site's business day ends (midnight unless the site says else)."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        minor_unit(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def business_date(self, at: datetime) -> date:
        """The site's business day that an instant belongs to (cut at its own cut-off)."""
        if at.tzinfo is None:
            raise ValueError("business_date needs an aware datetime")
        local = at.astimezone(self.zone)
        cutoff = timedelta(hours=self.day_cutoff.hour, minutes=self.day_cutoff.minute)
        return (local - cutoff).date()

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The half-open instant range [start, end) of a business day, in the site's zone."""
        start = datetime.combine(day, self.day_cutoff, tzinfo=self.zone)
        end = datetime.combine(day + timedelta(days=1), self.day_cutoff, tzinfo=self.zone)
        return start, end
