import {
  isSupportedCountry,
  parsePhoneNumberFromString,
  validatePhoneNumberLength,
  type CountryCode,
  type PhoneNumber,
} from "libphonenumber-js/max";
import { canonical, notCanonical, type Canonical } from "./canonical.js";

// The "max" metadata knows each country's number ranges, not only its
// lengths: without it an old 8-digit Brazilian mobile or an area code that
// does not exist would pass as valid.

/** A region (ISO 3166-1 alpha-2, such as "BR") whose national numbers can be read. */
export type PhoneRegion = CountryCode;

/** Whether `value` is a region code the phone-number metadata has rules for. */
export function isPhoneRegion(value: string): value is PhoneRegion {
  return isSupportedCountry(value);
}

/**
 * Reads a string of digits as a phone number and returns its E.164 digits
 * without "+". With `international`, the digits start with a country code.
 * Without it they are still read as international first, because that is
 * what WhatsApp ids are, and only when that gives no valid number as a
 * national number of `region`.
 */
export function canonicalPhoneDigits(digits: string, options: { international: boolean; region: PhoneRegion }): Canonical {
  const international = validNumber(`+${digits}`);
  if (international) return canonical(international.number.slice(1));
  if (options.international) return notCanonical(whyInvalid(`+${digits}`));
  const national = validNumber(digits, options.region);
  if (national) return canonical(national.number.slice(1));
  return notCanonical(whyInvalid(digits, options.region));
}

function validNumber(text: string, region?: PhoneRegion): PhoneNumber | undefined {
  const parsed = parsePhoneNumberFromString(text, region);
  if (parsed === undefined) return undefined;
  const number = withBrazilianNinthDigit(parsed);
  return number.isValid() ? number : undefined;
}

/**
 * Brazil put a 9 in front of every 8-digit mobile number (2012 to 2016), but
 * WhatsApp accounts made before still carry the old form, so both reach us
 * for one person. A Brazilian national number of a 2-digit area code (DDD)
 * and an 8-digit subscriber number beginning with 6, 7, 8 or 9 is such an old
 * mobile and gets its 9; one beginning with 2 to 5 is a landline and stays.
 * The old form is not a valid number any more, so this runs before validation.
 */
function withBrazilianNinthDigit(number: PhoneNumber): PhoneNumber {
  const national = number.nationalNumber;
  if (number.countryCallingCode !== "55" || !/^[1-9]{2}[6-9][0-9]{7}$/.test(national)) return number;
  return parsePhoneNumberFromString(`+55${national.slice(0, 2)}9${national.slice(2)}`) ?? number;
}

function whyInvalid(text: string, region?: PhoneRegion): string {
  switch (validatePhoneNumberLength(text, region)) {
    case "TOO_SHORT":
      return "the number is too short";
    case "TOO_LONG":
      return "the number is too long";
    case "INVALID_COUNTRY":
      return "the number starts with no known country code";
    default:
      return "the number is not a valid phone number";
  }
}
