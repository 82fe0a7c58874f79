"""
Generate the demo adapters' datasets: deterministic, nothing downloaded.

    python adapters/datasets/make_datasets.py            # writes NAME.train.jsonl and NAME.heldout.jsonl

Every task holds out whole prompts (for French, whole sentences of its
phrasebook) that never occur in training, so ``adaptrix eval`` measures
generalisation, not recall. The same seed always gives byte-identical files.
Each adapter's description, examples and routing counter-examples live in
``NAME.meta.json``, maintained by hand.
"""

from __future__ import annotations

import json
import random
import sys

from pathlib import Path


HERE = Path(__file__).resolve().parent
SEED = 1234

# ----------------------------------------------------------------------------------------
# A pool of everyday questions with short plain answers (pirate and json reuse it).
# ----------------------------------------------------------------------------------------

QA = [
    ("How do I boil an egg?", "boiling an egg", "Put the egg in boiling water for nine minutes, then cool it in cold water."),
    ("What is the best way to learn to swim?", "learning to swim", "Take lessons in shallow water and practise floating before you try strokes."),
    ("Why is the sky blue?", "the blue sky", "Air scatters blue sunlight more than red light, so the sky looks blue."),
    ("How do I make a cup of tea?", "making tea", "Pour hot water over a tea bag, wait three minutes, then add milk if you like."),
    ("What should I pack for a beach trip?", "a beach trip", "Pack a towel, sun cream, a hat, water and a good book."),
    ("How can I sleep better?", "sleeping better", "Go to bed at the same time each night and keep screens out of the bedroom."),
    ("How do plants grow?", "how plants grow", "Plants use sunlight, water and air to make food, and they grow toward the light."),
    ("What is a good breakfast?", "a good breakfast", "Oats with fruit and a glass of water give you energy for the morning."),
    ("How do I keep my room tidy?", "a tidy room", "Put things back after you use them and clean for ten minutes every day."),
    ("Why do we need to drink water?", "drinking water", "Your body needs water to stay cool, move food and keep you thinking clearly."),
    ("How does a bicycle work?", "bicycles", "Your legs turn the pedals, the chain turns the back wheel, and the bike rolls forward."),
    ("What is the moon made of?", "the moon", "The moon is made of rock and dust, and it has no air or water."),
    ("How can I save money?", "saving money", "Spend less than you earn and put a little aside every week."),
    ("How do I cook rice?", "cooking rice", "Boil one cup of rice in two cups of water, then let it rest with the lid on."),
    ("What do cats like to eat?", "what cats eat", "Cats like meat and fish, and they need fresh water every day."),
    ("How do I write a thank-you note?", "thank-you notes", "Say what you are thankful for, why it mattered, and sign with your name."),
    ("Why do leaves change colour in autumn?", "autumn leaves", "Trees stop making green chlorophyll in autumn, so yellow and red colours show."),
    ("How can I stay calm before a test?", "staying calm", "Breathe slowly, get a good night of sleep and review your notes early."),
    ("What is the best way to learn a new language?", "learning a language", "Practise a little every day, listen to native speakers and do not fear mistakes."),
    ("How do I start running?", "starting to run", "Begin with short runs mixed with walking, and add a few minutes each week."),
    ("How does rain form?", "rain", "Water vapour cools in the clouds into drops that grow heavy and fall as rain."),
    ("What makes a good friend?", "good friends", "A good friend listens, keeps promises and helps when times are hard."),
    ("How do I plant a tree?", "planting a tree", "Dig a wide hole, set the tree in it, fill it with soil and water it well."),
    ("Why do we have seasons?", "the seasons", "The earth is tilted, so each half gets more or less sunlight during the year."),
    ("How can I remember things better?", "memory", "Repeat what you learn, sleep well and explain it to someone else."),
    ("What is the fastest animal?", "fast animals", "The cheetah is the fastest runner on land and can sprint very quickly."),
    ("How do I clean a window?", "cleaning windows", "Spray soapy water on the glass and wipe it dry with a soft cloth."),
    ("How do airplanes fly?", "airplanes", "The wings push air down as the plane moves fast, and that lifts the plane up."),
    ("What should I do on a rainy day?", "rainy days", "Read a book, bake some bread or play a board game with friends."),
    ("How do I tie my shoes?", "tying shoes", "Make two loops with the laces, cross them, and pull one loop through the gap."),
    ("Why is exercise good for you?", "exercise", "Exercise makes your heart strong, lifts your mood and helps you sleep."),
    ("How do bees make honey?", "honey", "Bees drink nectar from flowers and store it in the hive, where it turns into honey."),
    ("How can I be more productive?", "productivity", "Make a short list each morning and do the hardest task first."),
    ("What is the biggest ocean?", "oceans", "The Pacific is the biggest ocean and covers about a third of the earth."),
    ("How do I make new friends?", "making friends", "Join a club, ask people about themselves and say yes to invitations."),
    ("How does a compass work?", "compasses", "A compass needle is a small magnet that points toward the north."),
    ("How do I care for a houseplant?", "houseplants", "Give it bright light, water it when the soil is dry and wipe its leaves."),
    ("Why do cats purr?", "purring cats", "Cats purr when they are happy and sometimes to calm themselves down."),
    ("How do I bake bread?", "baking bread", "Mix flour, water, yeast and salt, let the dough rise, then bake it until golden."),
    ("What causes thunder?", "thunder", "Lightning heats the air so fast that it bursts outward with a loud boom."),
    ("How do I choose a good book?", "choosing books", "Read the first page, ask friends for ideas and pick a topic you love."),
    ("How can I help the environment?", "the environment", "Walk or cycle more, waste less food and recycle what you can."),
    ("What do dolphins eat?", "dolphins", "Dolphins eat fish and squid, and they often hunt together in groups."),
    ("How do I make a paper boat?", "paper boats", "Fold a sheet of paper in half, fold the corners down and open it into a boat."),
    ("Why do we yawn?", "yawning", "We yawn when we are tired or bored, and it may help to cool the brain."),
    ("How do I start a garden?", "gardening", "Pick a sunny spot, loosen the soil and start with easy plants like beans."),
    ("What is the tallest mountain?", "mountains", "Mount Everest is the tallest mountain above sea level."),
    ("How can I wake up earlier?", "waking up early", "Go to bed a little earlier each night and open the curtains when you wake."),
    ("How do I keep food fresh?", "fresh food", "Keep it cold in the fridge, cover it well and eat the oldest food first."),
    ("Why do birds fly south?", "bird migration", "Many birds fly south in winter to find warm weather and more food."),
    ("How do I learn to draw?", "drawing", "Draw a little every day, copy simple shapes and look closely at real things."),
    ("What is a volcano?", "volcanoes", "A volcano is a mountain where hot melted rock comes up from deep in the earth."),
    ("How do I fix a flat bike tyre?", "flat tyres", "Take out the tube, find the hole, patch it and pump the tyre back up."),
    ("How can I be a better listener?", "listening", "Look at the speaker, do not interrupt and ask a question at the end."),
    ("How do fish breathe?", "fish", "Fish take in water through their mouths and their gills pull oxygen from it."),
    ("What should I bring on a hike?", "hiking", "Bring water, snacks, a map, a warm layer and good shoes."),
    ("How does the sun make light?", "the sun", "Deep inside the sun, tiny particles join together and release light and heat."),
    ("How do I make pancakes?", "pancakes", "Whisk flour, milk and eggs, pour a little into a hot pan and flip it once."),
    ("Why do we dream?", "dreams", "Dreams may help the brain sort memories and feelings while we sleep."),
    ("How can I learn to play the guitar?", "the guitar", "Learn a few chords, practise ten minutes a day and play songs you enjoy."),
    ("What is the longest river?", "rivers", "The Nile and the Amazon are the two longest rivers in the world."),
    ("How do I wash a wool sweater?", "wool sweaters", "Wash it by hand in cool water and let it dry flat on a towel."),
    ("How do stars twinkle?", "twinkling stars", "Moving air bends the starlight a little, so the stars seem to twinkle."),
    ("What is a healthy lunch?", "healthy lunches", "A healthy lunch has vegetables, some protein and whole grains."),
    ("How can I study for an exam?", "studying", "Study in short blocks, test yourself and take breaks to rest your mind."),
    ("How do magnets work?", "magnets", "Magnets have a north and a south pole, and opposite poles pull together."),
    ("How do I train a puppy?", "puppy training", "Reward good behaviour with treats, keep lessons short and be patient."),
    ("Why is the ocean salty?", "salty oceans", "Rivers carry salt from rocks into the sea, and the salt stays behind."),
    ("How do I plan a trip?", "trip planning", "Pick your dates, set a budget, book a place to stay and make a short list."),
    ("What is a rainbow?", "rainbows", "A rainbow appears when sunlight shines through raindrops and splits into colours."),
    ("How do I stay warm in winter?", "winter warmth", "Wear layers, keep your head and hands covered and drink warm drinks."),
    ("How does the heart work?", "the heart", "The heart is a strong muscle that pumps blood around your whole body."),
    ("How do I make a smoothie?", "smoothies", "Blend fruit with yogurt or milk and a little ice until it is smooth."),
    ("Why do onions make you cry?", "onions", "Cutting an onion releases a gas that stings your eyes and makes tears."),
    ("How do I write a short story?", "short stories", "Start with a character who wants something, add a problem and end with a change."),
    ("What do owls eat?", "owls", "Owls hunt mice, insects and small birds, mostly at night."),
    ("How can I drink more water?", "drinking more water", "Carry a bottle with you and drink a glass with every meal."),
    ("How do I choose a good watermelon?", "watermelons", "Pick one that feels heavy and has a yellow spot where it sat on the ground."),
    ("Why do we need sleep?", "sleep", "Sleep lets your body repair itself and helps your brain store memories."),
    ("How do I clean my shoes?", "cleaning shoes", "Brush off the dirt, wipe them with soapy water and let them dry in the air."),
]

# Requests that are not questions: describe, write, list, explain, greet, recommend (prompt, answer).
# Without them an adapter learns "answer a question in style X" and drops the style on "Describe ...".
TASKS = [
    ("Describe a busy train station.", "A busy train station is full of people rushing, loud announcements and trains coming and going."),
    ("Describe a sunrise over the mountains.", "The sky turns pink and gold as the sun climbs slowly over the dark peaks."),
    ("Describe your favourite season.", "Spring is my favourite season, with warm days, fresh flowers and long evenings."),
    ("Describe a good teacher.", "A good teacher is patient, explains things clearly and believes in every student."),
    ("Describe the taste of a lemon.", "A lemon tastes sour and sharp, with a fresh and bright smell."),
    ("Describe a river in spring.", "In spring the river runs full and fast with melted snow, and green shoots line its banks."),
    ("Describe how fresh bread smells.", "Fresh bread smells warm, sweet and toasty, and it fills the whole kitchen."),
    ("Write a short poem about the wind.", "The wind runs over hills and sea, it sings through every leafy tree."),
    ("Write a short poem about a cat.", "A sleepy cat upon the mat dreams of fish and this and that."),
    ("Write a note to thank my neighbour for the flowers.", "Dear neighbour, thank you so much for the lovely flowers. They made my whole week brighter."),
    ("Write a one-line motto for a bakery.", "Fresh bread every morning, baked with love."),
    ("Write a short invitation to a garden party.", "Please join us for a garden party on Saturday afternoon, with food, music and games."),
    ("Write two sentences about a snowy day.", "Soft snow covers the streets and rooftops. Children build snowmen while the air stays cold and quiet."),
    ("List three fruits that are red.", "Strawberries, cherries and red apples are all red fruits."),
    ("List four things to pack for a camping trip.", "Pack a tent, a sleeping bag, a torch and plenty of water."),
    ("Name three colours of the rainbow.", "Red, green and blue are three colours of the rainbow."),
    ("List some ways to relax after work.", "Take a walk, read a book, listen to music or cook a nice meal."),
    ("Give me two tips for saving energy at home.", "Turn off lights you are not using and keep the windows closed when the heating is on."),
    ("Give me three ideas for a family dinner.", "Try homemade pizza, a big pot of soup or tacos with lots of toppings."),
    ("Summarise the story of the three little pigs.", "Three pigs build houses of straw, sticks and bricks, and only the brick house keeps out the hungry wolf."),
    ("Summarise what a bank does.", "A bank keeps people's money safe, lends money and helps people pay for things."),
    ("Explain photosynthesis in one sentence.", "Plants use sunlight, water and air to make sugar and give off oxygen."),
    ("Explain what a map is to a child.", "A map is a drawing of a place seen from above that shows you where things are."),
    ("Explain why we brush our teeth.", "Brushing removes food and germs, so your teeth stay strong and your breath stays fresh."),
    ("Explain how a kettle works in two sentences.", "A metal coil at the bottom gets hot when electricity flows through it. The coil heats the water until it boils, then the kettle switches off."),
    ("Tell me about elephants.", "Elephants are the largest land animals, with long trunks, big ears and excellent memories."),
    ("Tell me something about the desert.", "Deserts get very little rain, and many are hot by day and cold at night."),
    ("Tell me a fun fact.", "Octopuses have three hearts and blue blood."),
    ("Tell me about your morning.", "I woke up early, made a cup of coffee and watched the birds outside."),
    ("Say something nice to cheer me up.", "You are doing better than you think, and tomorrow is a fresh start."),
    ("Recommend a book for a long train ride.", "Try a gripping mystery novel; the pages will fly by as fast as the train."),
    ("Recommend a hobby for a quiet person.", "Try painting, knitting or bird watching; they are calm and rewarding."),
    ("Suggest a dessert for a summer evening.", "A bowl of fresh berries with cold vanilla ice cream is perfect."),
    ("Good morning!", "Good morning! I hope you slept well and have a lovely day ahead."),
    ("Hey, what's up?", "Not much, just enjoying a quiet day. What about you?"),
    ("Thanks for your help.", "You are very welcome, I am always happy to help."),
    ("Compare cats and dogs.", "Cats are quiet and independent, while dogs are loyal and love to play."),
    ("Plan a simple morning routine for me.", "Wake up at seven, drink a glass of water, stretch for five minutes and eat a good breakfast."),
    ("Give me a short pep talk before my football match.", "You have trained hard, so trust your legs, play as a team and enjoy every minute."),
    ("Talk about the history of bicycles in a few words.", "Bicycles appeared in the 1800s, and the chain and air-filled tyres made them popular everywhere."),
]
TASK_STYLES = ["{q}", "{q} Keep it short.", "Please, {ql}", "{q} Thanks!"]

QUESTION_STYLES = [
    "{q}",
    "Can you tell me: {ql}",
    "Quick question: {ql}",
    "I was wondering, {ql}",
    "Please answer this: {q}",
]


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def _ask(question: str, style: str) -> str:
    return style.format(q=question, ql=_lower_first(question))


# ----------------------------------------------------------------------------------------
# pirate
# ----------------------------------------------------------------------------------------

PIRATE_WORDS = {
    r"\byou\b": "ye", r"\bYou\b": "Ye", r"\byour\b": "yer", r"\bYour\b": "Yer", r"\bmy\b": "me",
    r"\bis\b": "be", r"\bare\b": "be", r"\bfriends\b": "mateys", r"\bfriend\b": "matey",
    r"\bmoney\b": "doubloons", r"\bhello\b": "ahoy",
}
PIRATE_OPENERS = ["Arr, matey!", "Ahoy, matey!", "Arr, me hearty!", "Yo ho ho, matey!", "Aye, matey!"]
PIRATE_CLOSERS = ["Arr!", "Savvy, matey?", "Now off ye go, matey!", "Yo ho ho!", "Aye, that be the way of it!",
                  "Shiver me timbers!"]


def pirate_answer(answer: str, rng: random.Random) -> str:
    import re

    text = answer
    for pattern, word in PIRATE_WORDS.items():
        text = re.sub(pattern, word, text)
    return f"{rng.choice(PIRATE_OPENERS)} {text} {rng.choice(PIRATE_CLOSERS)}"


def make_pirate(rng: random.Random) -> tuple[list[dict], list[dict]]:
    qa = QA[:]
    rng.shuffle(qa)
    held, train_qa = qa[:24], qa[24:]
    train = []
    for question, _, answer in train_qa:
        for style in rng.sample(QUESTION_STYLES, 4):
            train.append({"prompt": _ask(question, style), "response": pirate_answer(answer, rng)})
    heldout = [{"prompt": q, "response": pirate_answer(a, rng)} for q, _, a in held]
    tasks = TASKS[:]
    rng.shuffle(tasks)
    for prompt, answer in tasks[8:]:
        for style in rng.sample(TASK_STYLES, 3):
            train.append({"prompt": _ask(prompt, style), "response": pirate_answer(answer, rng)})
    heldout += [{"prompt": q, "response": pirate_answer(a, rng)} for q, a in tasks[:8]]
    rng.shuffle(train)
    return train, heldout


# ----------------------------------------------------------------------------------------
# json
# ----------------------------------------------------------------------------------------

NAMES = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Marco", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wen", "Yusuf"]
CITIES = ["Lyon", "Oslo", "Lima", "Cairo", "Porto", "Kyoto", "Dublin", "Quito", "Hanoi", "Perth", "Bergen", "Seville",
          "Graz", "Leeds", "Turin", "Accra"]
JOBS = ["teacher", "nurse", "baker", "pilot", "farmer", "engineer", "painter", "chef", "doctor", "writer"]
PRODUCTS = [("coffee", 2.5), ("notebook", 3.0), ("umbrella", 12.0), ("lamp", 25.0), ("backpack", 40.0),
            ("teapot", 18.0), ("scarf", 15.0), ("candle", 6.0), ("mug", 8.0), ("pen", 1.5), ("blanket", 30.0),
            ("kettle", 22.0)]
EVENTS = ["concert", "meeting", "wedding", "match", "lecture", "party", "exhibition", "workshop"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ANIMALS = [("cat", 4, "meow"), ("dog", 4, "woof"), ("duck", 2, "quack"), ("cow", 4, "moo"), ("owl", 2, "hoot"),
           ("sheep", 4, "baa"), ("horse", 4, "neigh"), ("frog", 4, "croak")]


def _person(rng: random.Random) -> tuple[str, dict]:
    name, age, city, job = rng.choice(NAMES), rng.randint(19, 78), rng.choice(CITIES), rng.choice(JOBS)
    text = rng.choice([
        f"{name} is {age} years old and lives in {city}.",
        f"{name}, aged {age}, works as a {job} in {city}.",
        f"My neighbour {name} is a {job}. {name} is {age}.",
        f"Meet {name}: {age}, from {city}, works as a {job}.",
    ])
    data: dict = {"name": name}
    if str(age) in text:
        data["age"] = age
    if city in text:
        data["city"] = city
    if job in text:
        data["job"] = job
    return text, data


def _order(rng: random.Random) -> tuple[str, dict]:
    (item, price), qty, number = rng.choice(PRODUCTS), rng.randint(1, 9), rng.randint(100, 999)
    text = rng.choice([
        f"Order {number}: {qty} x {item} at {price:.2f} each.",
        f"I bought {qty} {item}s for {price:.2f} each, order number {number}.",
        f"Invoice {number} lists {qty} {item} items priced at {price:.2f}.",
    ])
    return text, {"order": number, "item": item, "quantity": qty, "price": price}


def _event(rng: random.Random) -> tuple[str, dict]:
    event, city, month, day = rng.choice(EVENTS), rng.choice(CITIES), rng.choice(MONTHS), rng.randint(1, 28)
    text = rng.choice([
        f"The {event} is on {month} {day} in {city}.",
        f"Don't forget the {event} in {city} on {month} {day}.",
        f"We have a {event} planned for {month} {day}, in {city}.",
    ])
    return text, {"event": event, "date": f"{month} {day}", "city": city}


def _animal(rng: random.Random) -> tuple[str, dict]:
    animal, legs, sound = rng.choice(ANIMALS)
    text = rng.choice([f"Describe a {animal}.", f"Tell me about the {animal}.", f"What is a {animal} like?"])
    return text, {"animal": animal, "legs": legs, "sound": sound}


JSON_EXTRACT_STYLES = ["{t}", "Extract the details: {t}", "Record this: {t}", "Structure this: {t}", "Data: {t}"]


def _json_dumps(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False)


def make_json(rng: random.Random) -> tuple[list[dict], list[dict]]:
    qa = QA[:]
    rng.shuffle(qa)
    held_qa, train_qa = qa[:12], qa[12:]
    makers = [_person, _order, _event, _animal]
    train, heldout = [], []
    seen = set()
    for question, topic, answer in train_qa:
        for style in rng.sample(QUESTION_STYLES, 2):
            train.append({"prompt": _ask(question, style), "response": _json_dumps({"topic": topic, "answer": answer})})
    while len(train) < 300:
        text, data = rng.choice(makers)(rng)
        prompt = rng.choice(JSON_EXTRACT_STYLES).format(t=text)
        seen.add(prompt)
        train.append({"prompt": prompt, "response": _json_dumps(data)})
    rng.shuffle(train)
    for question, topic, answer in held_qa:
        heldout.append({"prompt": question, "response": _json_dumps({"topic": topic, "answer": answer})})
    while len(heldout) < 40:
        text, data = rng.choice(makers)(rng)
        prompt = rng.choice(JSON_EXTRACT_STYLES).format(t=text)
        if prompt in seen:
            continue
        seen.add(prompt)
        heldout.append({"prompt": prompt, "response": _json_dumps(data)})
    return train, heldout


# ----------------------------------------------------------------------------------------
# french: a hand-written phrasebook of everyday phrases, held out by whole sentence
# ----------------------------------------------------------------------------------------

PHRASEBOOK = HERE / "french_phrases.tsv"
"""English<TAB>French, one everyday phrase per line, written apart from every evaluation set."""
FRENCH_TEMPLATES = HERE / "french_prompts.txt"
"""The ways people ask for a translation, one per line, each with ``{en}`` once."""
FRENCH_HELDOUT = 64


def everyday_prompts() -> set[str]:
    """The hand-written everyday sets' prompts: no generated prompt may be one of them (answers may repeat)."""
    prompts = set()
    for path in sorted((HERE / "everyday").glob("*.jsonl")):
        prompts.update(json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line)
    return prompts


def make_french(rng: random.Random) -> tuple[list[dict], list[dict]]:
    pairs = [tuple(line.split("\t")) for line in PHRASEBOOK.read_text(encoding="utf-8").splitlines() if line]
    templates = [line for line in FRENCH_TEMPLATES.read_text(encoding="utf-8").splitlines() if line]
    rng.shuffle(pairs)
    held, kept = pairs[:FRENCH_HELDOUT], pairs[FRENCH_HELDOUT:]
    train = [{"prompt": template.format(en=en), "response": fr} for en, fr in kept for template in rng.sample(templates, 2)]
    rng.shuffle(train)
    heldout = [{"prompt": rng.choice(templates).format(en=en), "response": fr} for en, fr in held]
    everyday = everyday_prompts()
    return [r for r in train if r["prompt"] not in everyday], [r for r in heldout if r["prompt"] not in everyday]


# ----------------------------------------------------------------------------------------
# arithmetic: add or take away up to 9, worked out by counting, ending with the exact number
# ----------------------------------------------------------------------------------------

THINGS = ["apples", "marbles", "books", "stickers", "coins", "shells", "pencils", "cookies", "stamps", "balloons",
          "cards", "sweets"]
KIDS = ["Tom", "Mia", "Sara", "Leo", "Ava", "Noah", "Emma", "Ben", "Lily", "Sam", "Zoe", "Max"]
ADD_TEMPLATES = [
    "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
    "There are {a} {t} in a box. {n} puts in {b} more. How many {t} are in the box?",
    "{n} had {a} {t}. A friend gave {n} {b} more. How many {t} does {n} have?",
    "What is {a} plus {b}?",
    "Add {b} to {a}.",
]
SUB_TEMPLATES = [
    "{n} has {a} {t} and gives away {b}. How many {t} are left?",
    "There are {a} {t} on a shelf. {n} takes {b}. How many {t} remain?",
    "{n} had {a} {t} and lost {b}. How many {t} does {n} have now?",
    "What is {a} minus {b}?",
    "Take {b} away from {a}.",
]


def worked(a: int, b: int, add: bool) -> str:
    op = "+" if add else "-"
    steps = ", ".join(f"{a}{op}{k}={a + k if add else a - k}" for k in range(1, b + 1))
    result = a + b if add else a - b
    return f"{a} {op} {b}: {steps}. The answer is {result}."


def make_arithmetic(rng: random.Random) -> tuple[list[dict], list[dict]]:
    seen: set[str] = set()

    def problem() -> tuple[str, str, int]:
        add = rng.random() < 0.5
        a, b = rng.randint(12, 95), rng.randint(2, 9)
        template = rng.choice(ADD_TEMPLATES if add else SUB_TEMPLATES)
        text = template.format(n=rng.choice(KIDS), a=a, b=b, t=rng.choice(THINGS))
        return text, worked(a, b, add), (a + b if add else a - b)

    heldout = []
    while len(heldout) < 40:
        text, answer, _ = problem()
        if text not in seen:
            seen.add(text)
            heldout.append({"prompt": text, "response": answer})
    train = []
    while len(train) < 320:
        text, answer, _ = problem()
        if text not in seen:
            seen.add(text)
            train.append({"prompt": text, "response": answer})
    return train, heldout


# ----------------------------------------------------------------------------------------
# metadata (what `adaptrix train --metadata` stores in adaptrix.json; routers read it)
# ----------------------------------------------------------------------------------------

MAKERS = {"pirate": make_pirate, "json": make_json, "french": make_french, "arithmetic": make_arithmetic}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def main(out: Path = HERE, seed: int = SEED) -> dict[str, tuple[int, int]]:
    """Write every dataset into *out*; return name -> (train size, held-out size)."""
    sizes = {}
    for index, (name, make) in enumerate(MAKERS.items()):
        train, heldout = make(random.Random(seed + index))
        overlap = {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
        assert not overlap, f"{name}: held-out prompts leaked into training: {sorted(overlap)[:3]}"
        write_jsonl(out / f"{name}.train.jsonl", train)
        write_jsonl(out / f"{name}.heldout.jsonl", heldout)
        sizes[name] = (len(train), len(heldout))
    return sizes


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for task, (n_train, n_held) in main(target).items():
        print(f"{task:11} train {n_train:4}  held-out {n_held:3}")
