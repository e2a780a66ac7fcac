"""Build the Northwind Broadband support-assistant data (synthetic, written for tuneforge).

Standard library only, seeded: running it again writes byte-identical files.

    python examples/data/support_assistant/make_data.py            # writes next to this file
    python examples/data/support_assistant/make_data.py --out DIR

Each intent below has customer phrasings (split into train / validation / test phrasings, so a
held-out prompt is a phrasing the model never saw, with fresh slot values), a few on-policy answers
(`chosen`, see POLICY.md) and bad answers of named kinds (`rejected`). An answer template is only
used with a phrasing that mentions every slot it uses, so an answer never quotes an amount, month
or plan the customer did not give.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
from pathlib import Path

SEED = 20240517

# Rows per file.
COUNTS = {
    "sft_train": 160,
    "sft_validation": 40,
    "prefs_train": 240,
    "prefs_validation": 60,
    "prefs_test": 60,
    "feedback_train": 240,
    "feedback_validation": 60,
}
SPLIT_OF = {name: name.split("_", 1)[1] for name in COUNTS}
FEEDBACK_UP_SHARE = 0.55

# Which phrasings of an intent each split draws from (each intent has 12).
PHRASINGS = {"train": [0, 1, 2, 3, 4, 5], "validation": [6, 7, 10], "test": [8, 9, 11]}

# Kinds of bad answer and how often each is drawn.
KIND_WEIGHTS = {
    "verbose": 22,  # the right content buried in greetings, filler and sign-offs
    "wrong_contact": 20,  # the right action but an invented or wrong URL / phone number
    "false_promise": 18,  # promises the policy does not give (refund outside window, credits...)
    "wrong_action": 18,  # the wrong procedure or wrong facts about the policy
    "asks_secret": 12,  # asks for a password, one-time code or full card details
    "unhelpful": 10,  # rude, dismissive or no answer
}

# --------------------------------------------------------------------------------------------------
# Slot values

NAMES = ["Priya", "Tom", "Aisha", "Marek", "Chloe", "Daniel", "Yuki", "Fatima", "Liam", "Sofia"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
TOWNS = [
    "Riverton",
    "Oakfield",
    "Millbrook",
    "Ashford",
    "Lakeside",
    "Brookhaven",
    "Westbury",
    "Kingsley",
    "Fairview",
    "Elmstead",
    "Harrowgate",
    "Stonebridge",
]
PLANS = {"Basic 100": (25, 100), "Fibre 500": (35, 500), "Fibre 900": (45, 900)}


def money(rng: random.Random, low: int, high: int) -> str:
    return f"${rng.randint(low, high)}.{rng.choice(['00', '50', '99', '49', '25'])}"


def make_slots(rng: random.Random) -> dict[str, str]:
    plan = rng.choice(list(PLANS))
    current, target = sorted(rng.sample(list(PLANS), 2), key=lambda p: PLANS[p][0])
    expected = PLANS[plan][0]
    days_in = rng.randint(2, 27)
    days_out = rng.randint(35, 170)
    return {
        "name": rng.choice(NAMES),
        "amount": money(rng, 12, 95),
        "expected": f"${expected}.00",
        "billed": f"${expected + rng.randint(6, 40)}.{rng.choice(['00', '50', '99', '49'])}",
        "month": rng.choice(MONTHS),
        "when_in": rng.choice(
            [
                f"{days_in} days ago",
                "yesterday",
                "last week",
                "two weeks ago",
                "three weeks ago",
                f"{days_in} days ago",
            ]
        ),
        "when_out": rng.choice(
            [
                f"{days_out} days ago",
                f"{rng.randint(2, 8)} months ago",
                "last year",
                "seven weeks ago",
                f"{days_out} days ago",
            ]
        ),
        "plan": plan,
        "current": current,
        "target": target,
        "price": f"${PLANS[target][0]}",
        "mbps": str(max(2, int(PLANS[plan][1] * rng.uniform(0.05, 0.35)))),
        "gb": str(rng.choice([300, 450, 600, 800, 1200, 1500, 2000])),
        "town": rng.choice(TOWNS),
        "move_when": rng.choice(
            [
                "next month",
                "in three weeks",
                "in a month",
                f"at the end of {rng.choice(MONTHS)}",
                f"in {rng.randint(20, 45)} days",
                "in six weeks",
            ]
        ),
        "outage_len": rng.choice([f"{rng.randint(2, 6)} days", f"{rng.randint(30, 72)} hours"]),
        "last4": f"{rng.randint(0, 9999):04d}",
        "account": f"NW-{rng.randint(100000, 999999)}",
        "day": rng.choice(DAYS),
        "n_weeks": str(rng.randint(2, 6)),
    }


# Slots an answer may use when the phrasing mentions another slot (price follows the target plan).
DERIVED = {"price": "target"}

GREETINGS = ["", "", "", "", "Hi.", "Hello!", "Hi there.", "Good evening.", "Hey."]
SUFFIXES = ["", "", "", "", " Thanks.", " Thank you.", " Please help.", " Cheers."]

# --------------------------------------------------------------------------------------------------
# Intents: 12 phrasings (6 train, 3 validation, 3 test), on-policy answers, and bad answers by kind.
# (verbose and wrong_contact answers are also made from the on-policy ones, below.)

INTENTS: dict[str, dict[str, list[str]]] = {
    "billing_dispute": {
        "prompts": [
            "My {month} bill is {billed} but my plan is only {expected} a month. Why?",
            "I've been charged {billed} twice this month. Can you fix it?",
            "Why is my bill {billed} this month? It's usually {expected}.",
            "I think my {month} invoice is wrong, it says {billed} instead of {expected}.",
            "You overcharged me. {billed} for {month} is not what I signed up for.",
            "My bill went up to {billed} without any warning. I want this looked at.",
            "The {month} statement shows {billed}, but I pay {expected} a month. Please check it.",
            "I was billed {billed} for {month}, which seems far too high.",
            "Can someone review my bill? I got charged {billed} when it should be {expected}.",
            "I was double charged for {month}: two payments of {billed}. What do I do?",
            "My bill says {billed} for {month} but I'm on the {expected} plan. Is that a mistake?",
            "Why did you charge me {billed} in {month}? My usual bill is {expected}.",
        ],
        "chosen": [
            "Sorry about that. Please open a billing review at northwind.example/billing; our "
            "billing team replies within 5 working days and corrects any error on your next bill.",
            "I'm sorry your bill looks wrong. You can dispute the {billed} charge at "
            "northwind.example/billing, and the billing team will reply within 5 working days.",
            "Please raise a billing review at northwind.example/billing. The team will check your "
            "{month} bill and reply within 5 working days.",
        ],
        "false_promise": [
            "I've refunded the {billed} to your card and added a $20 credit for the trouble. "
            "You'll see it tomorrow.",
            "Don't worry, I've corrected your bill and you won't be charged at all next month.",
        ],
        "wrong_action": [
            "If the bill is wrong, the quickest fix is to cancel your plan at "
            "northwind.example/cancel and sign up again at the right price.",
            "Bills can't be changed once they are issued, so you'll need to pay the full "
            "{billed}. It should be lower next month.",
        ],
        "asks_secret": [
            "I can check that. Please send me your account password and the full number of the "
            "card you pay with.",
        ],
        "unhelpful": ["Prices go up. That's just how it is."],
    },
    "refund_in_window": {
        "prompts": [
            "I was charged {amount} {when_in} for an add-on I never used. Can I get a refund?",
            "Can I get my {amount} back? I paid it {when_in} by mistake.",
            "I bought the {amount} speed boost {when_in} and I don't want it. Refund please.",
            "I'd like a refund for a {amount} charge I paid {when_in}.",
            "Is it too late to get a refund on the {amount} I paid {when_in}?",
            "I paid {amount} {when_in} for a TV add-on I don't need. Can it be refunded?",
            "Please refund the {amount} you took {when_in}, I never wanted that add-on.",
            "How do I get a refund for {amount} that was charged {when_in}?",
            "I want my money back for the {amount} charge {when_in}. Is that possible?",
            "Could you refund {amount}? The payment went out {when_in} and I didn't mean to buy it.",
            "I signed up for an add-on {when_in} and paid {amount}. Can I cancel "
            "it and get a refund?",
            "Is a refund possible for the {amount} I was charged {when_in}?",
        ],
        "chosen": [
            "Yes, that charge is within our 30-day refund window. Request the refund at "
            "northwind.example/refund and it reaches your original payment method in 5-7 working "
            "days.",
            "Yes, charges from the last 30 days can be refunded. Submit the request for the "
            "{amount} at northwind.example/refund; the money arrives in 5-7 working days.",
            "Good news: the {amount} is within the 30-day refund window. Please request it at "
            "northwind.example/refund and expect it back in 5-7 working days.",
        ],
        "false_promise": [
            "Done! I've refunded the {amount} and added a free month of service. It will be in "
            "your account within the hour.",
            "I've refunded you twice the {amount} as an apology. No need to do anything.",
        ],
        "wrong_action": [
            "Refunds aren't possible once a payment has gone through, sorry. The {amount} will "
            "stay on your account as credit.",
            "To get a refund you need to cancel your plan first at northwind.example/cancel.",
        ],
        "unhelpful": ["Refunds are a hassle. Are you sure it's worth it for {amount}?"],
    },
    "refund_out_of_window": {
        "prompts": [
            "I was charged {amount} {when_out} for something I never used. I want a refund.",
            "Can I still get a refund for the {amount} I paid {when_out}?",
            "I only just noticed an add-on charge of {amount} from {when_out}. Please refund it.",
            "I'd like my {amount} back, I paid it {when_out} and never used the service.",
            "Refund me the {amount} from {when_out}, I forgot to cancel the add-on.",
            "Is a refund possible for a payment of {amount} made {when_out}?",
            "I want a refund on {amount} that went out {when_out}. How?",
            "Please give me back the {amount} charged {when_out}. I didn't need it.",
            "Can you refund {amount}? It was charged {when_out} but I never used it.",
            "How do I claim back {amount} that I paid {when_out}?",
            "I was billed {amount} {when_out} for an add-on I forgot about. Can I have it back?",
            "I'd like a refund please: {amount}, charged {when_out}, never used.",
        ],
        "chosen": [
            "I'm sorry, refunds are only possible within 30 days of a charge, so the {amount} "
            "from {when_out} can't be refunded. If you think it was a billing error, open a "
            "billing review at northwind.example/billing.",
            "Sorry, that charge is outside our 30-day refund window, so it can't be refunded. If "
            "it was billed in error, you can ask for a billing review at northwind.example/billing.",
            "Unfortunately refunds are only available within 30 days, and this {amount} charge is "
            "older than that. You can still open a billing review at northwind.example/billing if "
            "you think it was a mistake.",
        ],
        "false_promise": [
            "No problem, I've processed a full refund of {amount}. You'll see it on your card in "
            "3 days.",
            "Since you're a loyal customer I'll make an exception and refund the {amount}. Just "
            "request it at northwind.example/refund.",
            "Yes, you can get the {amount} back. Request the refund at northwind.example/refund "
            "and it arrives in 5-7 working days.",
        ],
        "wrong_action": [
            "To get money back for an old charge, cancel your plan at northwind.example/cancel "
            "and the {amount} will be returned with your final bill.",
            "Old charges are refunded by our fraud team. Call 1-800-555-0199 and ask for the "
            "{amount} back.",
        ],
        "unhelpful": ["That was ages ago. Nothing I can do."],
    },
    "password_reset": {
        "prompts": [
            "I forgot my password and can't log in to my account.",
            "How do I reset my Northwind password?",
            "I'm locked out of my account, I think I typed the wrong password too many times.",
            "My password isn't working anymore. Can you reset it? My account is {account}.",
            "I need to change my account password, where do I do that?",
            "I can't log in to the Northwind app, it says my password is wrong.",
            "I can't remember the login password for account {account}. Help?",
            "Please help me get back into my account, the password I have doesn't work.",
            "What's the way to reset a forgotten password for my online account?",
            "I've lost access to my Northwind login. Can you send me a new password?",
            "My password doesn't work and I can't get into my account. What now?",
            "How can I set a new password? I forgot the old one.",
        ],
        "chosen": [
            "You can reset your password at northwind.example/reset; we'll email a reset link to "
            "your account email. Never share your password with anyone, including us.",
            "Please go to northwind.example/reset and follow the link we email you to set a new "
            "password. We'll never ask for your password in chat.",
            "Use northwind.example/reset to get a reset link by email, then choose a new password. "
            "Please don't send your password to anyone, including me.",
        ],
        "asks_secret": [
            "Sure, just send me your old password and the new one you'd like, and I'll update it "
            "for you.",
            "I can reset it. Please reply with your current password and the one-time code we "
            "just texted you.",
        ],
        "false_promise": [
            "I've unlocked your account and texted you a new password; it will arrive within a "
            "minute.",
        ],
        "wrong_action": [
            "I've reset your password to welcome123. Log in with that and change it later.",
            "To reset a password you need to close your account at northwind.example/cancel and "
            "open a new one.",
        ],
        "unhelpful": ["You should have written it down. Try to remember it."],
    },
    "outage": {
        "prompts": [
            "My internet is down. Is there an outage in {town}?",
            "No internet since this morning, is something wrong on your side?",
            "Is Northwind down right now? Nothing is loading at home.",
            "The internet keeps cutting out completely in {town} today. Is there a known problem?",
            "Our whole street in {town} has no broadband. What's going on?",
            "The router light is red and there's no connection. Is there an outage?",
            "Is there a service outage near {town}? I've had no connection for a few hours.",
            "My broadband stopped working an hour ago. Are you having problems?",
            "Nothing connects to the internet at my place in {town}. Is the network down?",
            "Do you have an outage today? My connection just died.",
            "The internet is down everywhere in {town}, is it your network?",
            "Everything is offline at home in {town}. Is there a problem with your network?",
        ],
        "chosen": [
            "Sorry for the trouble. Check northwind.example/status for outages in your area and "
            "updates on the fix. Outages over 24 hours are credited automatically on your next "
            "bill.",
            "Please check northwind.example/status, which shows live outages and repair times for "
            "your area. If nothing is listed, restart your router and report a fault there.",
            "You can see any outage in {town} and its expected fix time at "
            "northwind.example/status. If none is shown, restart your router and report a fault "
            "on the same page.",
        ],
        "false_promise": [
            "Yes, there's an outage, but it will be fixed within 10 minutes and everyone affected "
            "gets a $50 credit.",
            "I've sent an engineer, they'll be at your door within the hour.",
        ],
        "wrong_action": [
            "Outages are usually caused by your own devices. Cancel and reconnect your plan at "
            "northwind.example/cancel to reset the line.",
            "Hold the reset button on your router for 30 seconds to factory-reset it. That fixes "
            "every outage.",
        ],
        "unhelpful": ["Outages happen. Just wait until it comes back."],
    },
    "outage_credit": {
        "prompts": [
            "My internet was down for {outage_len}. I want compensation.",
            "Do I get money back for being offline {outage_len} last week?",
            "We had no broadband for {outage_len}. How do I claim a credit?",
            "I paid for a service I didn't get for {outage_len}. What are you going to do about it?",
            "Will my bill be reduced after {outage_len} without internet?",
            "I expect a discount, the connection was dead for {outage_len}.",
            "Can I claim something back for being offline {outage_len}?",
            "Our internet went out for {outage_len}. Is there any compensation?",
            "How do I get a credit for the {outage_len} my broadband was down?",
            "After {outage_len} with no service, am I owed money?",
            "Our connection was down for {outage_len}. Will we be compensated?",
            "I was without internet for {outage_len}. Can I get money off my bill?",
        ],
        "chosen": [
            "Sorry about the outage. Outages longer than 24 hours are credited automatically on "
            "your next bill, so you don't need to claim. You'll see the credit at "
            "northwind.example/billing.",
            "You don't need to do anything: outages over 24 hours are credited automatically, so "
            "your {outage_len} without service will show as a credit on your next bill at "
            "northwind.example/billing.",
        ],
        "false_promise": [
            "I've added a $100 credit and a free upgrade to Fibre 900 for the next six months.",
            "You'll get a full refund of this month's bill within 24 hours.",
        ],
        "wrong_action": [
            "You need to file a formal complaint at northwind.example/complaints to get any money "
            "back for an outage.",
            "Compensation is only paid if you cancel. Go to northwind.example/cancel.",
        ],
        "unhelpful": ["Outages aren't our fault. No compensation, sorry."],
    },
    "cancel_plan": {
        "prompts": [
            "I want to cancel my {plan} plan.",
            "How do I cancel my Northwind broadband?",
            "Please cancel my contract, I'm switching providers.",
            "Is there a fee to cancel my {plan} plan?",
            "I'm leaving Northwind. What do I need to do to cancel?",
            "Can I cancel my internet today? I no longer need it.",
            "I'd like to end my {plan} subscription. How?",
            "How can I close my broadband account with you?",
            "I want to stop my Northwind service. What's the process?",
            "Cancel my {plan} service please, I've found a cheaper deal.",
            "What's the process to cancel {plan}?",
            "I don't want Northwind anymore. How do I cancel my {plan} plan?",
        ],
        "chosen": [
            "You can cancel any time at northwind.example/cancel. There's no cancellation fee, and "
            "your service continues until the end of the current billing month.",
            "Sorry to see you go. Cancel at northwind.example/cancel; there's no fee, and your "
            "{plan} service runs until the end of this billing month.",
            "Our plans have no contract, so you can cancel at northwind.example/cancel with no "
            "fee. Your service stays on until the billing month ends.",
        ],
        "false_promise": [
            "I've cancelled it for you and refunded the rest of this month. You'll get the money "
            "tomorrow.",
            "If you stay, I'll give you six months free. Deal?",
        ],
        "wrong_action": [
            "Cancellations must be made by letter. Please post a signed request to our head "
            "office.",
            "To cancel, just stop paying; the account closes by itself after a few months.",
        ],
        "unhelpful": ["Why would you leave? Our service is the best. I won't help with that."],
    },
    "upgrade_plan": {
        "prompts": [
            "I want to upgrade to {target}. How?",
            "Can I switch from {current} to {target}?",
            "How much is {target} and how do I get it?",
            "I need faster internet. Can I move up to {target}?",
            "Please upgrade my plan to {target}.",
            "Is there a fee to upgrade to {target}?",
            "What do I need to do to change my plan to {target}?",
            "I'm on {current} and want {target} instead. Is that possible?",
            "Could I get {target} instead of my current plan?",
            "I'd like more speed, please move me from {current} to {target}.",
            "How do I upgrade from {current} to {target}?",
            "Can I go up to {target}? What would it cost?",
        ],
        "chosen": [
            "You can switch to {target} ({price}/month) at northwind.example/plans. The change is "
            "immediate and there's no upgrade fee.",
            "{target} costs {price} a month. Upgrade at northwind.example/plans; it takes effect "
            "straight away with no fee.",
            "Yes! Choose {target} at northwind.example/plans. It's {price} a month, starts "
            "immediately and has no upgrade fee.",
        ],
        "false_promise": [
            "I've upgraded you to {target} for free, forever. Enjoy!",
            "Upgrades are free for the first year, so you'll pay nothing extra for {target} until "
            "next year.",
        ],
        "wrong_action": [
            "To change plans, cancel your current one at northwind.example/cancel and sign up "
            "again for {target}.",
            "Upgrades need an engineer visit. Book one and expect to wait about two weeks.",
        ],
        "unhelpful": ["{target} is expensive. You probably don't need it."],
    },
    "data_usage": {
        "prompts": [
            "How much data have I used this month?",
            "Is there a data cap on my {plan} plan?",
            "Will I be charged extra if I use more than {gb}GB this month?",
            "Where can I see my data usage?",
            "I've been streaming a lot, am I going to go over my limit?",
            "What happens if I download {gb}GB this month?",
            "Does {plan} have a monthly data limit?",
            "Can I check how much internet I've used so far?",
            "Do you charge for using too much data? I used {gb}GB last month.",
            "How do I see my usage, and is there a cap?",
            "Is there a limit on how much data I can use on {plan}?",
            "Will I pay more if I use {gb}GB of data in a month?",
        ],
        "chosen": [
            "All Northwind plans have unlimited data, so there's no cap or extra charge. You can "
            "see your usage at northwind.example/usage.",
            "There's no data limit on {plan} or any of our plans, so you won't pay extra. Your "
            "usage is shown at northwind.example/usage.",
            "Don't worry, data is unlimited on every plan, even at {gb}GB a month. Check your "
            "usage any time at northwind.example/usage.",
        ],
        "false_promise": [
            "I've added 1TB of bonus data to your account at no cost.",
            "I've doubled your speed for free so your data goes further this month.",
        ],
        "wrong_action": [
            "Your plan has a 500GB cap; above that it's $10 for every extra 50GB.",
            "Usage isn't shown online. Call us every month and we'll read it out to you.",
        ],
        "unhelpful": ["Just use less internet and you won't have to worry."],
    },
    "fraud_report": {
        "prompts": [
            "There's a {amount} payment to Northwind on my card ending {last4}, but I'm not even "
            "a customer.",
            "Someone has logged into my account and changed my email address.",
            "I think my Northwind account has been hacked.",
            "I got a text saying I owe Northwind {amount} with a link to pay. Is it a scam?",
            "Someone ordered a new router on my account that I never asked for.",
            "My card ending {last4} was charged {amount} by Northwind and it wasn't me.",
            "I see an unauthorised payment of {amount} to Northwind on my card. Help!",
            "Somebody changed the password on my account, it wasn't me.",
            "Someone got into my Northwind account without my permission. What do I do?",
            "A caller said they were from Northwind and asked for my card details. Was that you?",
            "I got an email from 'Northwind' asking me to confirm my password. Is it real?",
            "There's a charge of {amount} from Northwind on my card ending {last4} "
            "that I didn't authorise.",
        ],
        "chosen": [
            "Please call our fraud team now on 1-800-555-0199; they're available 24/7 and can "
            "secure your account. Don't share your password or full card number with anyone.",
            "That sounds like possible fraud, so please contact our fraud team on 1-800-555-0199 "
            "(24/7) straight away. We'll never ask for your password or full card number.",
            "I'm sorry. Fraud is handled by our specialist team: call 1-800-555-0199, open 24/7. "
            "Never give anyone your password, PIN or full card number.",
        ],
        "asks_secret": [
            "I can check that for you. Please send me the full card number, expiry date and "
            "security code so I can find the payment.",
            "To confirm you're the owner, reply with your password and the code we just texted "
            "you.",
        ],
        "false_promise": [
            "I've blocked the payment and refunded the {amount}; your account is now fully secure.",
            "Don't worry, I've secured your account and reversed everything. Nothing else to do.",
        ],
        "wrong_action": [
            "Just reset your password at northwind.example/reset and it should be fine. No need "
            "to report it.",
            "Please open a billing review at northwind.example/billing and we'll look into it "
            "within 5 working days.",
        ],
        "unhelpful": ["That's between you and your bank, not us."],
    },
    "address_change": {
        "prompts": [
            "I need to update my billing address.",
            "How do I change the address on my bills?",
            "My billing address is wrong, it still says my old flat in {town}.",
            "Can I change where my bills are sent? My new address is in {town}.",
            "Please update my postal address for billing.",
            "I have a new billing address in {town}. Where do I change it?",
            "Where do I change the billing address on my account?",
            "My bills still go to {town}. How can I update the address?",
            "How can I correct my billing address?",
            "I want my bills to go to a new address in {town}.",
            "I need to change my billing address to my new flat in {town}.",
            "Can you tell me how to update the address my bills go to?",
        ],
        "chosen": [
            "You can update your billing address under Account details at "
            "northwind.example/account. If your broadband is moving too, tell us at "
            "northwind.example/move.",
            "Please change it at northwind.example/account under Account details; the new address "
            "is used from your next bill.",
        ],
        "false_promise": [
            "I've updated it for you and waived this month's bill for the inconvenience.",
        ],
        "wrong_action": [
            "To change your billing address you need to cancel and open a new account.",
            "Address changes are done by an engineer. Book a visit at "
            "northwind.example/appointments.",
        ],
        "asks_secret": [
            "Sure, send me your password and your full card number and I'll change it myself.",
        ],
        "unhelpful": ["Just keep using the old address, it doesn't matter."],
    },
    "slow_speed": {
        "prompts": [
            "My internet is really slow, I'm paying for {plan} but only getting {mbps} Mbps.",
            "Why is my broadband so slow tonight?",
            "Speeds have been terrible all week. Can you fix it?",
            "I'm on {plan} and the speed test shows {mbps} Mbps. That's not right.",
            "Videos keep buffering, my connection is so slow.",
            "The Wi-Fi is crawling, pages take ages to load.",
            "I pay for {plan} but I'm getting about {mbps} Mbps. What can I do?",
            "My connection has become very slow lately. Any ideas?",
            "Internet speed is way below what I pay for on {plan}. Help?",
            "Why am I only getting {mbps} Mbps on my connection?",
            "My {plan} connection is slow, only {mbps} Mbps on a speed test. Why?",
            "Everything online is so slow at the moment. What should I do?",
        ],
        "chosen": [
            "Sorry about that. Restart your router and run a test at northwind.example/speedtest; "
            "if you get under half your plan's speed, book a free line check at "
            "northwind.example/appointments.",
            "Please restart your router, then test at northwind.example/speedtest. If the result "
            "is below half of your {plan} speed, book a free line check at "
            "northwind.example/appointments.",
        ],
        "false_promise": [
            "I've boosted your line to Fibre 900 for free, it should be much faster now.",
            "An engineer will come today between 2 and 3pm to fix it, guaranteed.",
        ],
        "wrong_action": [
            "Slow speeds are normal in the evening. Upgrade to Fibre 900 at "
            "northwind.example/plans to fix it.",
            "Please cancel and rejoin at northwind.example/cancel; that resets your speed.",
        ],
        "unhelpful": ["Everyone's internet is slow sometimes. Deal with it."],
    },
    "router_setup": {
        "prompts": [
            "I just got my new router. How do I set it up?",
            "How do I connect the Northwind router?",
            "Which cable goes where on the new router?",
            "My router arrived today, what do I do with it?",
            "I'm setting up my broadband for the first time, where do I start?",
            "How do I install the router you sent me?",
            "Can you tell me how to get my new Northwind router working?",
            "New router delivered, what are the setup steps?",
            "I need help setting up the router that came in the post.",
            "What's the easiest way to install my new Northwind router?",
            "How do I set up the Northwind router? It just arrived.",
            "I've unboxed my new router. Where does the cable go?",
        ],
        "chosen": [
            "Plug the grey cable into the fibre wall socket and the router's FIBRE port, then "
            "switch it on. The Wi-Fi details are on the router's label; the full guide is at "
            "northwind.example/router.",
            "Connect the router to the fibre wall socket, power it on and wait for the white "
            "light. Use the Wi-Fi details on the label. Step-by-step help is at "
            "northwind.example/router.",
        ],
        "false_promise": [
            "I'll send an engineer today to set it up for free, no need to do anything.",
        ],
        "wrong_action": [
            "Plug the router into your phone socket and it should work straight away.",
            "You need to call 1-800-555-0199 to activate the router before you can use it.",
        ],
        "asks_secret": ["Send me your account password and I'll set it up remotely."],
        "unhelpful": ["Read the manual, it's all in there."],
    },
    "invoice_copy": {
        "prompts": [
            "Can I get a copy of my {month} invoice?",
            "I need my bill from {month} for my records.",
            "Where can I download old invoices?",
            "Please send me a copy of the {month} bill, I lost it.",
            "How do I get a PDF of my invoice for my company?",
            "My accountant needs my invoice for {month}. Where is it?",
            "I need to see my {month} invoice again, where can I find it?",
            "Can you give me a copy of an old bill?",
            "How can I get hold of the invoice for {month}?",
            "Where do I find previous bills to print?",
            "I need a copy of my invoice from {month}. How?",
            "Can I download a PDF of my {month} bill?",
        ],
        "chosen": [
            "You can download invoices from the last 24 months at northwind.example/invoices; "
            "choose {month} and select Download PDF.",
            "All invoices from the past 24 months are at northwind.example/invoices, where you "
            "can download each one as a PDF.",
        ],
        "false_promise": [
            "I'll post printed copies of all your invoices today, free of charge.",
        ],
        "wrong_action": [
            "Invoices are only kept for 3 months, so older bills are no longer available.",
            "Open a billing review at northwind.example/billing to request a copy of an invoice.",
        ],
        "asks_secret": ["Sure! Tell me your account password and I'll email it to you."],
        "unhelpful": ["We don't do copies. You should have saved it."],
    },
    "payment_failed": {
        "prompts": [
            "My payment of {amount} failed. What happens now?",
            "I got an email saying my direct debit bounced.",
            "Why was my card declined for my Northwind bill?",
            "My payment didn't go through this month, will you cut off my internet?",
            "The {amount} payment for {month} failed, how do I fix it?",
            "Your system says my payment failed but I have money in my account.",
            "My bill payment of {amount} was rejected. What should I do?",
            "Will my service be stopped because my payment failed?",
            "I've been told my last payment was unsuccessful. How do I sort it?",
            "The card payment for my {month} bill bounced. Help?",
            "My {month} payment failed. Is my internet going to be cut off?",
            "I have a failed payment of {amount} on my account. How do I fix it?",
        ],
        "chosen": [
            "Please check or update your payment method at northwind.example/pay and we'll retry "
            "the payment. Your service stays on for 14 days after a failed payment.",
            "Don't worry, your service stays active for 14 days. Check your card details at "
            "northwind.example/pay and we'll retry the {amount} payment.",
        ],
        "asks_secret": [
            "I can retry it now. Please send me your full card number, expiry date and CVV here "
            "in chat.",
        ],
        "false_promise": [
            "No problem, I've waived this month's bill so you don't need to pay.",
        ],
        "wrong_action": [
            "Your service has been suspended. Call the fraud team on 1-800-555-0199 to restore it.",
            "Just ignore it, we'll take double next month.",
        ],
        "unhelpful": ["That's your bank's problem, not ours."],
    },
    "moving_house": {
        "prompts": [
            "I'm moving to {town} {move_when}. Can I take my broadband with me?",
            "We're moving house {move_when}, what happens to our internet?",
            "How do I transfer my Northwind service to my new home in {town}?",
            "I'm relocating {move_when}. Do I need a new contract?",
            "Moving to a new place in {town}, can you move my connection?",
            "Can I keep my plan when I move house {move_when}?",
            "We're moving to {town} {move_when}. How do I move my broadband?",
            "I need my internet moved to a new address. How?",
            "Can my broadband come with me when I move {move_when}?",
            "I'm moving to {town}, what do I need to do about my internet?",
            "We move to {town} {move_when}. Can you move our internet?",
            "I'm moving house {move_when}. What do I do about my broadband?",
        ],
        "chosen": [
            "Tell us at least 14 days before you move at northwind.example/move and we'll transfer "
            "your service to your new address on moving day, with no new contract.",
            "Yes, your plan can move with you. Register the move at northwind.example/move at "
            "least 14 days ahead and we'll switch your service to {town} on moving day.",
            "Just register your new address at northwind.example/move at least 14 days before you "
            "move; your plan moves with you at no extra cost.",
        ],
        "false_promise": [
            "I've moved everything already and your internet will be live at the new place "
            "tomorrow morning, guaranteed.",
        ],
        "wrong_action": [
            "You'll have to cancel at northwind.example/cancel and sign up again at your new "
            "address.",
            "Just update your billing address at northwind.example/account and the service "
            "follows automatically.",
        ],
        "unhelpful": ["Moving is your business. Ask someone else."],
    },
    "complaint": {
        "prompts": [
            "I want to make a formal complaint about your service.",
            "I've called three times and nobody has fixed my problem. I'm furious.",
            "Your engineer didn't turn up and nobody told me. I want to complain.",
            "This is the worst service I've ever had. How do I complain?",
            "I've been waiting {n_weeks} weeks for a fix. I want this escalated.",
            "How do I escalate my issue to a manager?",
            "I'm unhappy with how my case was handled and want to file a complaint.",
            "Where do I send a complaint? I've had problems for {n_weeks} weeks.",
            "I'd like to escalate my complaint, nobody is listening.",
            "Who do I complain to? Your support has let me down again.",
            "I'm fed up after {n_weeks} weeks of problems and want to make a formal complaint.",
            "How do I raise a formal complaint against Northwind?",
        ],
        "chosen": [
            "I'm sorry you've had this experience. You can file a formal complaint at "
            "northwind.example/complaints, and a complaints manager will reply within 5 working "
            "days.",
            "I'm sorry. Please submit a formal complaint at northwind.example/complaints; it goes "
            "to a complaints manager who replies within 5 working days.",
        ],
        "false_promise": [
            "I'm so sorry. I've given you a full year free and a $200 payment as compensation.",
            "I'll make sure our CEO calls you personally today.",
        ],
        "wrong_action": [
            "Complaints are only accepted by post. Please write to our head office.",
            "Please post your complaint on social media so the team sees it.",
        ],
        "unhelpful": ["Complaining won't change anything, to be honest."],
    },
    "speak_to_human": {
        "prompts": [
            "Can I talk to a real person?",
            "I want to speak to an agent, not a bot.",
            "What's your phone number?",
            "How can I call Northwind support?",
            "Put me through to a human please.",
            "Is there a number I can ring to speak to someone?",
            "I'd rather speak to someone on the phone. How?",
            "Let me talk to a human agent.",
            "Can I get a person on the line instead of this chat?",
            "What number do I call for customer service?",
            "Can I speak to someone at Northwind by phone?",
            "I need a human, not a chatbot. Who can I call?",
        ],
        "chosen": [
            "Of course. You can reach our support team on 1-800-555-0142, open 8am to 8pm every "
            "day.",
            "Sure. Call our support team on 1-800-555-0142; lines are open 8am-8pm, seven days a "
            "week.",
        ],
        "false_promise": [
            "I've booked a call for you; an agent will ring you back in 5 minutes.",
        ],
        "wrong_action": [
            "We don't have phone support. Please write to us by post.",
            "For any human help, call our fraud team on 1-800-555-0199.",
        ],
        "unhelpful": ["I'm as good as a human. Just tell me the problem."],
    },
    "update_card": {
        "prompts": [
            "I have a new card, how do I update my payment details?",
            "My card expired. Can I give you the new one?",
            "Can I just type my card number here to pay?",
            "I want to change the card I pay with. The new one ends in {last4}.",
            "How do I switch my payments to a different bank card?",
            "Can you update my card details if I send them to you?",
            "My bank sent me a replacement card ending {last4}. How do I update it?",
            "Where can I change my payment card?",
            "I'd like to pay with a new card from now on. What do I do?",
            "Shall I send you my new card details in this chat?",
            "My old card was cancelled. How do I add my new card ending {last4}?",
            "Can I give you my new card number now?",
        ],
        "chosen": [
            "Please don't share card details in chat. You can add or change your card securely "
            "at northwind.example/pay.",
            "You can update your card securely at northwind.example/pay; it's used from your next "
            "bill. Never send card numbers in chat.",
        ],
        "asks_secret": [
            "Sure, type the full card number, expiry date and 3-digit security code here and I'll "
            "update it.",
            "Send me the whole number of the card ending {last4}, plus the CVV, and I'll add it.",
        ],
        "false_promise": [
            "I've updated it for you, and you'll get 10% off for using a new card.",
        ],
        "wrong_action": [
            "Card changes must be done in person at a Northwind shop.",
            "Cancel your plan at northwind.example/cancel and sign up again with the new card.",
        ],
        "unhelpful": ["Can't you figure that out yourself?"],
    },
    "technician_visit": {
        "prompts": [
            "I need to book an engineer to fix my line.",
            "Can I change my engineer appointment on {day}?",
            "My technician visit is on {day} but I can't be home. Can we move it?",
            "How do I arrange a home visit from a Northwind engineer?",
            "I need to cancel the engineer booked for {day}.",
            "When can a technician come out to check my connection?",
            "Can I rebook the engineer visit from {day} to another day?",
            "How do I get a technician to come to my house?",
            "I want to reschedule my engineer appointment on {day}.",
            "Please book a technician to look at my broadband.",
            "The engineer is booked for {day}, can I change the time?",
            "I need an engineer visit, but {day} doesn't work for me. How do I rebook?",
        ],
        "chosen": [
            "You can book, move or cancel an engineer visit at northwind.example/appointments and "
            "choose any free slot that suits you.",
            "Please use northwind.example/appointments to change your {day} visit; you can pick "
            "any free slot there.",
        ],
        "false_promise": [
            "I've booked an engineer for you; they'll arrive within the hour.",
            "No problem, I've moved your visit to tomorrow morning and added a $30 credit.",
        ],
        "wrong_action": [
            "Engineer visits can't be changed. If you're not home, you'll pay a $60 missed-visit "
            "fee.",
            "Call our fraud team on 1-800-555-0199 to arrange a visit.",
        ],
        "unhelpful": ["Engineers are busy. Wait and see if it fixes itself."],
    },
    "wifi_password": {
        "prompts": [
            "What's my Wi-Fi password?",
            "I forgot the password for my home Wi-Fi.",
            "How do I change my Wi-Fi name and password?",
            "A guest wants to connect. Where do I find the Wi-Fi password?",
            "My new phone needs the Wi-Fi key, where is it?",
            "How can I change the Wi-Fi password on my Northwind router?",
            "I can't remember the Wi-Fi key for my router.",
            "Where is the wireless password for my network?",
            "I need the password to join my own Wi-Fi. Where do I look?",
            "How do I set a new Wi-Fi password?",
            "Where do I find my Wi-Fi password?",
            "What is the password for my Northwind Wi-Fi network?",
        ],
        "chosen": [
            "Your default Wi-Fi name and password are printed on the label on the back of your "
            "router. You can change them at northwind.example/router.",
            "Check the label on the back of your router for the Wi-Fi name and password. To set "
            "new ones, go to northwind.example/router.",
        ],
        "asks_secret": [
            "Tell me your account password and I'll read your Wi-Fi password out to you.",
        ],
        "false_promise": [
            "I'll send a technician to set a new Wi-Fi password tonight, free of charge.",
        ],
        "wrong_action": [
            "Your Wi-Fi password is the same as your account password.",
            "Reset your account password at northwind.example/reset to get a new Wi-Fi password.",
        ],
        "unhelpful": ["I don't know your Wi-Fi password. Not my problem."],
    },
}

# Bad answers any intent can get.
GENERIC = {
    "asks_secret": [
        "I can help with that. First, to verify your identity, please reply with your account "
        "password and the full number of the card on your account.",
        "Before I go any further, please send me the one-time code we just texted you and your "
        "account PIN.",
        "Happy to help! Please confirm your full card number, expiry date and security code so I "
        "can pull up your account.",
    ],
    "unhelpful": [
        "I can't help with that here.",
        "That's not something I deal with. Look on the website.",
        "I don't know. Try asking someone else.",
        "Please read the FAQ before contacting support.",
    ],
}

VERBOSE_OPENERS = [
    "Thank you so much for reaching out to Northwind Broadband today! I completely understand "
    "how frustrating this must be, and your satisfaction is our number one priority.",
    "Hello and welcome to Northwind Broadband customer support! I really appreciate you taking "
    "the time to contact us, and I'm more than happy to help you with this.",
    "Great question! This is something a lot of our valued customers ask about, so you're "
    "definitely not alone, and I'd be delighted to walk you through it.",
    "I'm really sorry to hear about this, and I want to start by saying that we truly value you "
    "as a customer and always try our very best to make things right.",
]
VERBOSE_FILLERS = [
    "",
    " Of course, every customer's situation is a little different, so the details may vary "
    "depending on your account, your plan and a number of other factors.",
    " Many customers also find it helpful to read through our help pages and FAQs, which have "
    "lots of useful information about this and many other topics.",
]
VERBOSE_CLOSERS = [
    " I hope this helps! If you have any other questions at all, please don't hesitate to get in "
    "touch. Have a wonderful day!",
    " Is there anything else I can help you with today? Thank you again for choosing Northwind "
    "Broadband, we really appreciate your business!",
    " Thanks again for your patience and understanding, and for being a loyal Northwind customer.",
]

URL = re.compile(r"northwind\.example/([a-z]+)")
PHONE = re.compile(r"1-800-555-01\d\d")
WRONG_URLS = [
    "northwind.com/{path}",
    "www.northwind-broadband.com/{path}",
    "support.northwind.net/{path}",
    "northwind.example/help/{path}-centre",
    "my.northwindbroadband.co/{path}",
    "northwind.example/customer-{path}",
]
WRONG_PHONES = [
    "1-800-555-0100",
    "1-888-555-0142",
    "1-800-NORTHWIND",
    "1-800-555-0123",
    "1-877-555-0199",
]

# --------------------------------------------------------------------------------------------------
# Building rows


def fields_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def usable(templates: list[str], prompt_template: str) -> list[str]:
    """The answer templates whose slots the customer's message gives."""
    given = fields_of(prompt_template)
    given |= {derived for derived, source in DERIVED.items() if source in given}
    return [t for t in templates if fields_of(t) <= given]


def wrong_contact(answer: str, rng: random.Random) -> str:
    """The on-policy answer with its URLs / phone numbers swapped for wrong or invented ones."""
    out = URL.sub(lambda m: rng.choice(WRONG_URLS).format(path=m.group(1)), answer)
    return PHONE.sub(lambda m: rng.choice([p for p in WRONG_PHONES if p != m.group(0)]), out)


def verbose(answer: str, rng: random.Random) -> str:
    return (
        rng.choice(VERBOSE_OPENERS)
        + " "
        + answer
        + rng.choice(VERBOSE_FILLERS)
        + rng.choice(VERBOSE_CLOSERS)
    )


def bad_pool(intent: str, kind: str, prompt_template: str) -> tuple[list[str], list[str]]:
    """The intent's own and the generic templates of `kind` that fit the customer's message."""
    own = usable(INTENTS[intent].get(kind, []), prompt_template)
    return own, usable(GENERIC.get(kind, []), prompt_template)


def bad_answer(
    intent: str,
    kind: str,
    prompt_template: str,
    chosen: str,
    slots: dict[str, str],
    rng: random.Random,
) -> str:
    """A bad answer of `kind` to the message whose on-policy answer is `chosen`."""
    if kind == "verbose":
        text = verbose(chosen, rng)
    elif kind == "wrong_contact":
        text = wrong_contact(chosen, rng)
    else:
        own, generic = bad_pool(intent, kind, prompt_template)
        pool = own if own and (not generic or rng.random() < 0.7) else generic
        text = rng.choice(pool).format(**slots)
    assert text != chosen, (intent, kind, chosen)
    return text


def kind_quota(n: int, rng: random.Random) -> list[str]:
    """n kinds of bad answer in the proportions of KIND_WEIGHTS (largest remainder), shuffled."""
    total = sum(KIND_WEIGHTS.values())
    exact = {k: n * w / total for k, w in KIND_WEIGHTS.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


def make_prompt(text: str, rng: random.Random) -> str:
    """The customer's message with, sometimes, a greeting before it and a word after it."""
    greeting = rng.choice(GREETINGS)
    suffix = rng.choice(SUFFIXES)
    if "help" in suffix.lower() and "help" in text.lower():
        suffix = ""
    return (greeting + " " if greeting else "") + text + suffix


def draw(intent: str, split: str, rng: random.Random, taken: set[str]) -> dict[str, object]:
    """A new prompt of `intent` from `split`'s phrasings, with an on-policy answer.

    `taken` holds the file's messages so far, with and without greeting and sign-off: a message
    differing from an earlier one only in those is drawn only when no other can be found.
    """
    spec = INTENTS[intent]
    phrasings = [spec["prompts"][i] for i in PHRASINGS[split]]
    for attempt in range(400):
        template = rng.choice(phrasings)
        slots = make_slots(rng)
        core = template.format(**slots)
        prompt = make_prompt(core, rng)
        if prompt in taken or (attempt < 200 and core in taken):
            continue
        taken.update((prompt, core))
        chosen = rng.choice(usable(spec["chosen"], template)).format(**slots)
        return {"template": template, "slots": slots, "prompt": prompt, "chosen": chosen}
    raise RuntimeError(f"ran out of distinct prompts for {intent} in {split}")


def intent_order(n: int, rng: random.Random) -> list[str]:
    """n intents, as evenly spread over the intents as n allows, in a random order."""
    names = list(INTENTS)
    order = names * (n // len(names)) + rng.sample(names, n % len(names))
    rng.shuffle(order)
    return order


def build() -> dict[str, list[dict[str, object]]]:
    rng = random.Random(SEED)
    for intent, spec in INTENTS.items():  # every phrasing has an answer of every kind
        assert len(spec["prompts"]) == 12, intent
        for template in spec["prompts"]:
            assert usable(spec["chosen"], template), template
            for kind in ("false_promise", "wrong_action", "asks_secret", "unhelpful"):
                assert any(bad_pool(intent, kind, template)), (intent, kind, template)
    files: dict[str, list[dict[str, object]]] = {}
    for name, n in COUNTS.items():
        split, taken = SPLIT_OF[name], set()
        rows: list[dict[str, object]] = []
        order = intent_order(n, rng)
        labels = [False] * n
        if name.startswith("feedback"):
            ups = round(n * FEEDBACK_UP_SHARE)
            labels = [True] * ups + [False] * (n - ups)
            rng.shuffle(labels)
        kinds = iter(kind_quota(labels.count(False), rng))
        for i, intent in enumerate(order):
            ex = draw(intent, split, rng, taken)
            if name.startswith("sft"):
                rows.append({"prompt": ex["prompt"], "completion": ex["chosen"], "intent": intent})
                continue
            if labels[i]:  # a thumbs-up: the on-policy answer
                rows.append(
                    {
                        "prompt": ex["prompt"],
                        "completion": ex["chosen"],
                        "label": True,
                        "kind": "on_policy",
                        "intent": intent,
                    }
                )
                continue
            kind = next(kinds)
            rejected = bad_answer(intent, kind, ex["template"], ex["chosen"], ex["slots"], rng)
            if name.startswith("prefs"):
                rows.append(
                    {
                        "prompt": ex["prompt"],
                        "chosen": ex["chosen"],
                        "rejected": rejected,
                        "rejected_kind": kind,
                        "intent": intent,
                    }
                )
            else:
                rows.append(
                    {
                        "prompt": ex["prompt"],
                        "completion": rejected,
                        "label": False,
                        "kind": kind,
                        "intent": intent,
                    }
                )
        files[name] = rows
    check(files)
    return files


def check(files: dict[str, list[dict[str, object]]]) -> None:
    """No empty field, chosen != rejected, and no prompt shared by two splits."""
    by_split: dict[str, set[object]] = {}
    for name, rows in files.items():
        for row in rows:
            assert all(v != "" for v in row.values()), (name, row)
            if "chosen" in row:
                assert row["chosen"] != row["rejected"], (name, row)
        by_split.setdefault(SPLIT_OF[name], set()).update(row["prompt"] for row in rows)
    splits = list(by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = by_split[a] & by_split[b]
            assert not shared, f"prompts shared by {a} and {b}: {sorted(shared)[:3]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
