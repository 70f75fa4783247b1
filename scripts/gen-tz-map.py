#!/usr/bin/env python3
"""Generates libphonenumber's time-zone data for commguard's quiet hours (docs/compliance.md#quiet-hours).

Writes, from the Python `phonenumbers` package (a port of libphonenumber that ships its
time-zone map, Apache-2.0, The Libphonenumber Authors):

  domain/data/tz_map.txt      the prefix -> zones map, one `prefix|Zone1&Zone2` a line
  domain/data/tz_fixture.txt  the zones that `time_zones_for_number(parse(n))` gives for each
                              number of FIXTURE below, one `number|label|type|zones` a line

Usage: scripts/gen-tz-map.py   (from anywhere; needs python3 with venv and PyPI access)

Nothing is installed globally: the script makes a venv under /tmp, installs the pinned
phonenumbers into it and re-runs itself there.

PHONENUMBERS is pinned to the libphonenumber metadata that namba (the domain's parser, whose
number types decide between the number's own prefix and its country's zones) is built from:
namba::DATA_VERSION is "libphonenumber-9.0.36". Move both together; a domain test checks that
they agree.
"""

import os
import subprocess
import sys

PHONENUMBERS = "9.0.36"
VENV = f"/tmp/commguard-tzmap-venv-{PHONENUMBERS}"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAP_OUT = os.path.join(ROOT, "domain", "data", "tz_map.txt")
FIXTURE_OUT = os.path.join(ROOT, "domain", "data", "tz_fixture.txt")

# (number, label). Mobile and fixed numbers of every docs/compliance.md#country-rules country, the zones of every
# multi-zone country, and the other number types (toll-free, premium, VoIP, ...), including
# numbers libphonenumber gives no zone for (Etc/Unknown). Only the numbers are chosen here:
# the expected zones are whatever phonenumbers answers.
FIXTURE = [
    # United States
    ("+12125551234", "US New York fixed-or-mobile"),
    ("+14155550100", "US San Francisco"),
    ("+13125550100", "US Chicago"),
    ("+18085550100", "US Honolulu"),
    ("+16025550100", "US Phoenix"),
    ("+19075550100", "US Alaska (Adak and Anchorage)"),
    ("+19072091234", "US Juneau"),
    ("+12083201234", "US Idaho (Boise and Los Angeles)"),
    ("+17012345678", "US North Dakota"),
    ("+17872345678", "PR San Juan"),
    ("+18002345678", "US toll-free"),
    ("+19002345678", "US premium rate"),
    ("+15555550100", "US fictional 555 (invalid)"),
    # Canada
    ("+14165550100", "CA Toronto"),
    ("+16045550100", "CA Vancouver"),
    ("+13062345678", "CA Regina"),
    ("+17092272345", "CA St John's"),
    ("+17092345678", "CA Newfoundland and Labrador"),
    ("+18672345678", "CA Yukon / Fort Nelson"),
    ("+15062345678", "CA New Brunswick"),
    # United Kingdom
    ("+442079460000", "GB London fixed"),
    ("+441534712345", "JE Jersey fixed"),
    ("+447400123456", "GB mobile"),
    ("+448001234567", "GB toll-free"),
    ("+449012345678", "GB premium rate"),
    ("+445612345678", "GB VoIP"),
    ("+447012345678", "GB personal number"),
    ("+447640123456", "GB pager"),
    ("+445512345678", "GB UAN"),
    ("+442012345", "GB too short (invalid)"),
    # Germany
    ("+4930123456", "DE Berlin fixed"),
    ("+4915123456789", "DE mobile"),
    ("+498001234567890", "DE toll-free"),
    # France
    ("+33142685300", "FR Paris fixed"),
    ("+33612345678", "FR mobile"),
    ("+33801234567", "FR toll-free"),
    # Israel
    ("+97235551234", "IL Tel Aviv fixed"),
    ("+972502345678", "IL mobile"),
    # Australia
    ("+61291234567", "AU Sydney fixed"),
    ("+61731234567", "AU Brisbane fixed"),
    ("+61892345678", "AU Perth fixed"),
    ("+61882345678", "AU Adelaide fixed"),
    ("+61255053123", "AU Lord Howe fixed"),
    ("+61891621234", "CC Cocos fixed"),
    ("+61891641234", "CX Christmas Island fixed"),
    ("+61412345678", "AU mobile"),
    ("+611800123456", "AU toll-free"),
    # Japan
    ("+81312345678", "JP Tokyo fixed"),
    ("+819012345678", "JP mobile"),
    # Brazil (mobile numbers are geographical here)
    ("+551123456789", "BR Sao Paulo fixed"),
    ("+559233123456", "BR Manaus fixed"),
    ("+556832123456", "BR Rio Branco fixed"),
    ("+558136191234", "BR Fernando de Noronha fixed"),
    ("+5511961234567", "BR Sao Paulo mobile"),
    ("+5592981234567", "BR Manaus mobile"),
    ("+55800123456", "BR toll-free"),
    # India
    ("+911123456789", "IN Delhi fixed"),
    ("+918123456789", "IN mobile"),
    # Singapore
    ("+6561234567", "SG fixed"),
    ("+6581234567", "SG mobile"),
    # United Arab Emirates
    ("+97122345678", "AE Abu Dhabi fixed"),
    ("+971501234567", "AE mobile"),
    # The generic EU countries
    ("+431234567890", "AT fixed"),
    ("+43664123456", "AT mobile"),
    ("+3212345678", "BE fixed"),
    ("+32450001234", "BE mobile"),
    ("+3592123456", "BG fixed"),
    ("+35943012345", "BG mobile"),
    ("+38512345678", "HR fixed"),
    ("+385921234567", "HR mobile"),
    ("+35722345678", "CY fixed"),
    ("+35796123456", "CY mobile"),
    ("+420212345678", "CZ fixed"),
    ("+420601123456", "CZ mobile"),
    ("+4532123456", "DK fixed-or-mobile"),
    ("+4534412345", "DK mobile"),
    ("+3723212345", "EE fixed"),
    ("+37251234567", "EE mobile"),
    ("+358131234567", "FI fixed"),
    ("+358181234567", "AX Aland fixed"),
    ("+358412345678", "FI mobile"),
    ("+302123456789", "GR fixed"),
    ("+306912345678", "GR mobile"),
    ("+3612345678", "HU fixed"),
    ("+36201234567", "HU mobile"),
    ("+35312234567", "IE Dublin fixed"),
    ("+3532212345", "IE fixed"),
    ("+353850123456", "IE mobile"),
    ("+390212345678", "IT Milan fixed"),
    ("+390669812345", "VA Vatican fixed"),
    ("+393123456789", "IT mobile"),
    ("+39800123456", "IT toll-free"),
    ("+37163123456", "LV fixed"),
    ("+37121234567", "LV mobile"),
    ("+37031234567", "LT fixed"),
    ("+37061234567", "LT mobile"),
    ("+35227123456", "LU fixed"),
    ("+352628123456", "LU mobile"),
    ("+35621001234", "MT fixed"),
    ("+35696961234", "MT mobile"),
    ("+31101234567", "NL fixed"),
    ("+31612345678", "NL mobile"),
    ("+48123456789", "PL fixed"),
    ("+48512345678", "PL mobile"),
    ("+351212345678", "PT Lisbon fixed"),
    ("+351296123456", "PT Azores fixed"),
    ("+351291123456", "PT Madeira fixed"),
    ("+351912345678", "PT mobile"),
    ("+351800123456", "PT toll-free"),
    ("+40211234567", "RO fixed"),
    ("+40712034567", "RO mobile"),
    ("+421221234567", "SK fixed"),
    ("+421912123456", "SK mobile"),
    ("+38612345678", "SI fixed"),
    ("+38631234567", "SI mobile"),
    ("+34912345678", "ES Madrid fixed"),
    ("+34928123456", "ES Las Palmas fixed"),
    ("+34922123456", "ES Tenerife fixed"),
    ("+34612345678", "ES mobile"),
    ("+34712345678", "ES mobile 7"),
    ("+34800123456", "ES toll-free"),
    ("+34512345678", "ES UAN"),
    ("+34212345678", "ES unassigned (invalid)"),
    ("+468123456", "SE fixed"),
    ("+46701234567", "SE mobile"),
    # Other multi-zone countries
    ("+525512345678", "MX Mexico City"),
    ("+526641234567", "MX Tijuana"),
    ("+529981234567", "MX Cancun"),
    ("+526691234567", "MX Mazatlan"),
    ("+526561234567", "MX Ciudad Juarez"),
    ("+528991234567", "MX Matamoros"),
    ("+528001234567", "MX toll-free"),
    ("+74951234567", "RU Moscow fixed"),
    ("+73832123456", "RU Novosibirsk fixed"),
    ("+74232123456", "RU Vladivostok fixed"),
    ("+74152123456", "RU Kamchatka fixed"),
    ("+74012123456", "RU Kaliningrad fixed"),
    ("+79123456789", "RU mobile"),
    ("+78001234567", "RU/KZ toll-free"),
    ("+77272123456", "KZ Almaty fixed"),
    ("+77123456789", "KZ Aktobe fixed"),
    ("+77710009998", "KZ mobile"),
    ("+62218350123", "ID Jakarta fixed"),
    ("+62411123456", "ID Makassar fixed"),
    ("+62967123456", "ID Jayapura fixed"),
    ("+62812345678", "ID mobile"),
    ("+628001234567", "ID toll-free"),
    ("+56221234567", "CL Santiago"),
    ("+56322100123", "CL Valparaiso (32 2)"),
    ("+56321234567", "CL Easter Island (32 1)"),
    ("+56961234567", "CL mobile"),
    ("+541123456789", "AR Buenos Aires fixed"),
    ("+5493512345678", "AR Cordoba mobile"),
    ("+5491123456789", "AR Buenos Aires mobile"),
    ("+6493456789", "NZ Auckland fixed"),
    ("+6433051234", "NZ Chatham fixed"),
    ("+64211234567", "NZ mobile"),
    ("+2431234567", "CD Kinshasa fixed"),
    ("+2432234567", "CD Lubumbashi fixed"),
    ("+243991234567", "CD mobile"),
    ("+6913201234", "FM Pohnpei"),
    ("+6913501234", "FM Chuuk"),
    ("+6913701234", "FM Kosrae"),
    ("+68631234", "KI fixed"),
    ("+68672001234", "KI mobile"),
    ("+68940412345", "PF Tahiti fixed"),
    ("+68987123456", "PF mobile"),
    ("+59322123456", "EC Quito fixed"),
    ("+59352521234", "EC Galapagos and coast (52)"),
    ("+593991234567", "EC mobile"),
    ("+299991234", "GL Ittoqqortoormiit"),
    ("+97612345678", "MN Ulaanbaatar"),
    ("+976142345678", "MN Hovd"),
    ("+262262123456", "RE Reunion fixed"),
    ("+262269601234", "YT Mayotte fixed"),
    ("+262692123456", "RE mobile"),
    ("+59994300000", "CW Curacao fixed"),
    ("+59995234567", "CW mobile"),
    ("+5997171234", "BQ Bonaire"),
    ("+4722123456", "NO Oslo fixed"),
    ("+4741234567", "NO mobile"),
    ("+8613912345678", "CN mobile (geographical)"),
    ("+861012345678", "CN Beijing fixed"),
    # Non-geographic calling codes
    ("+80012345678", "international freephone"),
    ("+882123456789", "international networks"),
]


def in_venv():
    try:
        import phonenumbers
    except ImportError:
        return False
    return phonenumbers.__version__ == PHONENUMBERS and sys.prefix == VENV


def main():
    if not in_venv():
        if os.environ.get("COMMGUARD_TZMAP_VENV"):
            sys.exit(f"phonenumbers {PHONENUMBERS} not importable in {VENV}")
        os.environ["COMMGUARD_TZMAP_VENV"] = "1"
        if not os.path.exists(os.path.join(VENV, "bin", "python")):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call(
            [os.path.join(VENV, "bin", "pip"), "install", "--quiet", f"phonenumbers=={PHONENUMBERS}"]
        )
        os.execv(os.path.join(VENV, "bin", "python"), [os.path.join(VENV, "bin", "python"), *sys.argv])

    import phonenumbers
    from phonenumbers import PhoneNumberType
    from phonenumbers.timezone import time_zones_for_number
    from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

    provenance = (
        f"# From phonenumbers {phonenumbers.__version__} (Python port of libphonenumber; data\n"
        "# Apache-2.0, The Libphonenumber Authors). Generated by scripts/gen-tz-map.py: do not edit.\n"
    )

    for prefix, zones in TIMEZONE_DATA.items():
        assert prefix.isdigit() and zones, prefix
        for zone in zones:
            assert zone and "|" not in zone and "&" not in zone, zone
    assert TIMEZONE_LONGEST_PREFIX == max(map(len, TIMEZONE_DATA)), TIMEZONE_LONGEST_PREFIX
    with open(MAP_OUT, "w", encoding="utf-8") as out:
        out.write("# libphonenumber's time-zone map: E.164 digit prefix|zones joined by '&', in its order.\n")
        out.write(provenance)
        out.write(f"# phonenumbers {phonenumbers.__version__}; longest prefix {TIMEZONE_LONGEST_PREFIX}\n")
        for prefix in sorted(TIMEZONE_DATA):
            out.write(f"{prefix}|{'&'.join(TIMEZONE_DATA[prefix])}\n")

    type_names = {value: name for name, value in vars(PhoneNumberType).items() if name.isupper()}
    numbers = [number for number, _ in FIXTURE]
    assert len(numbers) == len(set(numbers)), "duplicate fixture number"
    with open(FIXTURE_OUT, "w", encoding="utf-8") as out:
        out.write(
            "# time_zones_for_number(parse(number)) and number_type(parse(number)) as libphonenumber\n"
            "# answers them: number|label|type|zones joined by '&', in its order.\n"
        )
        out.write(provenance)
        out.write(f"# phonenumbers {phonenumbers.__version__}\n")
        for number, label in FIXTURE:
            parsed = phonenumbers.parse(number)
            assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number, number
            kind = type_names[phonenumbers.number_type(parsed)]
            zones = time_zones_for_number(parsed)
            out.write(f"{number}|{label}|{kind}|{'&'.join(zones)}\n")
    print(f"wrote {MAP_OUT} ({len(TIMEZONE_DATA)} prefixes) and {FIXTURE_OUT} ({len(FIXTURE)} numbers)")


if __name__ == "__main__":
    main()
